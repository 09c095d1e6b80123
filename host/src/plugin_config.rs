//! A plugin's `config` table as its `init` receives it: JSON, with every
//! top-level value written `{ env = "NAME" }` or `{ file = "path" }` replaced
//! by the text the host reads there (a password, a token). The secret then
//! sits in neither the config file nor the environment override's history,
//! only in the host and the plugin that needs it.
//!
//! Only a table with exactly one key, `env` or `file`, whose value is a
//! string, is such a reference; any other table is passed on as it is. A
//! file's trailing newline is dropped; a relative path is the config file's
//! (resolved with the other paths, in `config.rs`).

use std::path::{Path, PathBuf};

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

/// Makes each `{ file = ... }` path of `table` absolute against `base`.
pub fn rebase_files(table: &mut toml::Table, base: &Path) {
    for (_, value) in table.iter_mut() {
        if let Some(SecretRef::File(path)) = secret_ref(value)
            && !path.is_absolute()
        {
            *value = toml::Value::Table(toml::Table::from_iter([(
                "file".to_string(),
                toml::Value::String(base.join(path).display().to_string()),
            )]));
        }
    }
}

/// `table` as JSON with its secret references read. An error names the key
/// (`sasl_password: environment variable KAFKA_PASSWORD is not set`), never
/// a value.
pub fn to_json(table: &toml::Table) -> Result<String, (String, String)> {
    let mut resolved = table.clone();
    for (key, value) in resolved.iter_mut() {
        let Some(reference) = secret_ref(value) else {
            continue;
        };
        let text = match &reference {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                (
                    key.clone(),
                    format!("environment variable {name} is not set"),
                )
            })?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| (key.clone(), format!("cannot read {}: {e}", path.display())))?,
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
        assert!(
            message.starts_with("cannot read /nonexistent/secret"),
            "{message}"
        );
    }
}
