//! A plugin's `config` table as its `init` receives it: JSON, with every
//! top-level value written `{ env = "NAME" }` or `{ file = "path" }` replaced
//! by the text the host reads there (a password, a token). The secret then
//! sits in neither the config file nor the environment override's history,
//! only in the host and the plugin that needs it.
//!
//! A value written `{ creds_jwt = "path/user.creds" }` is replaced by the
//! user JWT of that NATS `.creds` file, and only that: the file's NKey seed
//! stays in the host (granted as `[keys.<name>]`, which signs for the
//! plugin). A `{ file = ... }` or `{ env = ... }` whose text holds an NKey
//! seed is refused, so that a seed cannot reach a plugin by mistake.
//!
//! Only a table with exactly one key, `env`, `file` or `creds_jwt`, whose
//! value is a string, is such a reference; any other table is passed on as
//! it is. A file's trailing newline is dropped; a relative path is the config
//! file's (resolved with the other paths, in `config.rs`).

use std::path::{Path, PathBuf};

use crate::{nats_creds, secret_source};

/// Where a secret value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// The reference `value` is, if it is one.
pub fn secret_ref(value: &toml::Value) -> Option<SecretRef> {
    let table = value.as_table()?;
    if table.len() != 1 {
        return None;
    }
    match table.iter().next()? {
        (key, toml::Value::String(name)) if key == "env" => Some(SecretRef::Env(name.clone())),
        (key, toml::Value::String(path)) if key == "file" => {
            Some(SecretRef::File(PathBuf::from(path)))
        }
        _ => None,
    }
}

/// What a plugin config value the host replaces refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueRef {
    Secret(SecretRef),
    /// `{ creds_jwt = "path" }`: the user JWT of a NATS `.creds` file.
    CredsJwt(PathBuf),
}

fn value_ref(value: &toml::Value) -> Option<ValueRef> {
    if let Some(secret) = secret_ref(value) {
        return Some(ValueRef::Secret(secret));
    }
    let table = value.as_table()?;
    match (table.len(), table.get("creds_jwt")) {
        (1, Some(toml::Value::String(path))) => Some(ValueRef::CredsJwt(PathBuf::from(path))),
        _ => None,
    }
}

/// Makes each `{ file = ... }` and `{ creds_jwt = ... }` path of `table`
/// absolute against `base`.
pub fn rebase_files(table: &mut toml::Table, base: &Path) {
    for (_, value) in table.iter_mut() {
        let (key, path) = match value_ref(value) {
            Some(ValueRef::Secret(SecretRef::File(path))) => ("file", path),
            Some(ValueRef::CredsJwt(path)) => ("creds_jwt", path),
            _ => continue,
        };
        if !path.is_absolute() {
            *value = toml::Value::Table(toml::Table::from_iter([(
                key.to_string(),
                toml::Value::String(base.join(path).display().to_string()),
            )]));
        }
    }
}

/// `table` as JSON with its references read. An error names the key
/// (`sasl_password: environment variable KAFKA_PASSWORD is not set`), never
/// a value.
pub fn to_json(table: &toml::Table) -> Result<String, (String, String)> {
    let mut resolved = table.clone();
    for (key, value) in resolved.iter_mut() {
        let Some(reference) = value_ref(value) else {
            continue;
        };
        let fail = |message: String| (key.clone(), message);
        let read = |path: &Path| secret_source::read_text(path).map_err(fail);
        let text = match &reference {
            ValueRef::Secret(SecretRef::Env(name)) => {
                let text = secret_source::read_env(name).map_err(fail)?;
                if nats_creds::holds_seed(&text) {
                    let name = secret_source::shown(name);
                    return Err(fail(format!(
                        "environment variable {name} holds an NKey seed, which must stay in the host: \
                         grant it as [keys.<name>] (env = \"{name}\") and give the plugin the JWT alone"
                    )));
                }
                text
            }
            ValueRef::Secret(SecretRef::File(path)) => {
                let text = read(path)?;
                if text.contains("PRIVATE KEY-----") {
                    return Err(fail(format!(
                        "{}: this file holds a private key, which stays in the host: \
                         a TLS client key goes in sandbox.tls.client_key, a signing key in [keys.<name>]",
                        secret_source::shown_path(path)
                    )));
                }
                if nats_creds::holds_seed(&text) {
                    return Err(fail(format!(
                        "{}: this file holds an NKey seed, which must stay in the host: \
                         grant it as [keys.<name>] and use {{ creds_jwt = ... }}",
                        secret_source::shown_path(path)
                    )));
                }
                text
            }
            ValueRef::CredsJwt(path) => nats_creds::jwt(&read(path)?)
                .map_err(|e| fail(format!("{}: {e}", secret_source::shown_path(path))))?,
        };
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        *value = toml::Value::String(text.to_owned());
    }
    serde_json::to_string(&resolved).map_err(|e| (String::new(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn references_are_read_and_other_tables_pass() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-file\n").unwrap();
        // SAFETY: a variable only this test reads.
        unsafe { std::env::set_var("OUTBOX_TEST_PLUGIN_SECRET_7", "from-env") };
        let mut t = table(
            r#"
            user = "u"
            password = { env = "OUTBOX_TEST_PLUGIN_SECRET_7" }
            token = { file = "pw" }
            nested = { env = "X", other = 1 }
            count = { env = 3 }
            "#,
        );
        rebase_files(&mut t, dir.path());
        let json: serde_json::Value = serde_json::from_str(&to_json(&t).unwrap()).unwrap();
        assert_eq!(json["user"], "u");
        assert_eq!(json["password"], "from-env");
        assert_eq!(json["token"], "from-file");
        assert_eq!(
            json["nested"]["env"], "X",
            "a table of two keys is not a reference"
        );
        assert_eq!(json["count"]["env"], 3, "a non-string is not a reference");
    }

    #[test]
    fn a_missing_secret_names_the_key_not_the_value() {
        let t = table(r#"sasl_password = { env = "OUTBOX_TEST_SURELY_UNSET_91" }"#);
        let (key, message) = to_json(&t).unwrap_err();
        assert_eq!(key, "sasl_password");
        assert_eq!(
            message,
            "environment variable OUTBOX_TEST_SURELY_UNSET_91 is not set"
        );
        let t = table(r#"p = { file = "/nonexistent/secret" }"#);
        let (key, message) = to_json(&t).unwrap_err();
        assert_eq!(key, "p");
        // A name without an extension may be a pasted password: its
        // directory is named, not it.
        assert!(
            message.starts_with("cannot read /nonexistent/(a file whose name is not shown"),
            "{message}"
        );
    }

    /// A `.creds` file for a fresh user; returns its path, its JWT and its seed.
    fn creds_file(dir: &Path) -> (PathBuf, String, String) {
        let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVIn0.c2ln";
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let path = dir.join("user.creds");
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        (path, jwt.to_string(), seed)
    }

    #[test]
    fn creds_jwt_is_the_jwt_of_the_creds_file_and_never_its_seed() {
        let dir = tempfile::tempdir().unwrap();
        let (_, jwt, seed) = creds_file(dir.path());
        let mut t = table(r#"jwt = { creds_jwt = "user.creds" }"#);
        rebase_files(&mut t, dir.path());
        let json = to_json(&t).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["jwt"], jwt.as_str());
        assert!(!json.contains(&seed), "{json}");

        let t = table(r#"jwt = { creds_jwt = "/nonexistent/user.creds" }"#);
        let (key, message) = to_json(&t).unwrap_err();
        assert_eq!(key, "jwt");
        assert!(
            message.starts_with("cannot read /nonexistent/user.creds"),
            "{message}"
        );
        std::fs::write(dir.path().join("pw"), "s3cret-password\n").unwrap();
        let mut t = table(r#"jwt = { creds_jwt = "pw" }"#);
        rebase_files(&mut t, dir.path());
        let (key, message) = to_json(&t).unwrap_err();
        assert_eq!(key, "jwt");
        assert!(message.contains("/pw: not a NATS .creds file"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn a_file_or_variable_holding_an_nkey_seed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, seed) = creds_file(dir.path());
        std::fs::write(dir.path().join("user.nk"), format!("{seed}\n")).unwrap();
        for file in ["user.creds", "user.nk"] {
            let mut t = table(&format!(r#"token = {{ file = "{file}" }}"#));
            rebase_files(&mut t, dir.path());
            let (key, message) = to_json(&t).unwrap_err();
            assert_eq!(key, "token");
            assert!(
                message.contains(&format!(
                    "{file}: this file holds an NKey seed, which must stay in the host"
                )),
                "{message}"
            );
            assert!(message.contains("{ creds_jwt = ... }"), "{message}");
            assert!(!message.contains(&seed), "{message}");
        }
        let creds = std::fs::read_to_string(path).unwrap();
        // SAFETY: a variable only this test reads.
        unsafe { std::env::set_var("OUTBOX_TEST_PLUGIN_CREDS_8", creds) };
        let t = table(r#"token = { env = "OUTBOX_TEST_PLUGIN_CREDS_8" }"#);
        let (_, message) = to_json(&t).unwrap_err();
        assert!(message.contains("holds an NKey seed"), "{message}");
        assert!(!message.contains(&seed), "{message}");
    }
}
