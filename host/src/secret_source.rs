//! Reading what the host holds for plugins (signing keys, passwords, TLS
//! certificates and keys, NATS credentials) from files and the
//! environment, for `[keys]`, plugin config references (`{ file }`,
//! `{ env }`, `{ creds_jwt }`) and `sandbox.tls`, in one place:
//!
//! - a file must be a regular file of at most [`MAX_BYTES`] (a device, a
//!   FIFO or a huge file once grew the relay by gigabytes, or hung it);
//! - a variable's value is bounded the same way;
//! - errors name the path or the variable, unless what was written there
//!   looks like a secret itself (a key or seed pasted where its path or its
//!   variable's name belongs): then it is not repeated.

use std::io::Read as _;
use std::path::Path;

/// The most a secret, certificate or credentials file may hold.
pub const MAX_BYTES: u64 = 1 << 20;

/// Shown instead of a path or a variable name that looks like a secret.
const NOT_SHOWN: &str = "(what is written there looks like a secret, not a path or a variable name: it is not repeated)";

/// Whether `text`, written where a path or a variable name belongs, looks
/// like a secret: several lines, a PEM or `.creds` marker, a webhook
/// secret, an NKey seed, or a long run of base64 or base32 (a key body).
pub fn looks_secret(text: &str) -> bool {
    text.contains(['\n', '\r'])
        || text.contains("-----")
        || text.contains("whsec_")
        || crate::nats_creds::holds_seed(text)
        || text
            .split(|c: char| !(c.is_ascii_alphanumeric() || "+=_".contains(c)))
            .any(|run| run.len() >= 40)
}

/// A variable's name for an error message, if it has the shape of one
/// (`UPPER_SNAKE_CASE`, with an underscore once it is longer than 12
/// characters), else a note that it is not shown: a short password or key
/// written where the name belongs is not repeated either.
pub fn shown(name: &str) -> &str {
    let shaped = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && (name.len() <= 12 || name.contains('_'));
    if shaped && !looks_secret(name) {
        name
    } else {
        NOT_SHOWN
    }
}

/// A path for an error message: as it is if the file exists; a path to a
/// file that does not exist only if its name has the shape of one (a short
/// lower-case extension: `hook.secret`, `ca.pem`, `user.creds`), else its
/// directory alone (a password pasted where the path belongs would be the
/// name).
pub fn shown_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    if looks_secret(&text) {
        return NOT_SHOWN.to_string();
    }
    if path.exists() {
        return text.into_owned();
    }
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit_once('.'))
        .is_some_and(|(stem, ext)| {
            !stem.is_empty()
                && (1..=8).contains(&ext.len())
                && ext
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    match (named, path.parent()) {
        (true, _) => text.into_owned(),
        (false, Some(dir)) if !dir.as_os_str().is_empty() => {
            format!(
                "{}/(a file whose name is not shown: it may be a secret)",
                dir.display()
            )
        }
        _ => NOT_SHOWN.to_string(),
    }
}

/// Paths whose "files" are the kernel's views of processes and devices
/// (`/proc/self/environ` holds the whole environment).
fn is_kernel_view(path: &Path) -> bool {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| real.starts_with(p))
}

/// Reads `path`: a regular file of at most [`MAX_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = shown_path(path);
    if looks_secret(&path.to_string_lossy()) {
        return Err(format!(
            "{shown}; write it to a file and give its path, or use {{ env = \"NAME\" }}"
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() || is_kernel_view(path) {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > MAX_BYTES {
        return Err(format!(
            "{shown} holds {} bytes, more than a key, password or certificate file (1 MiB)",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String, String> {
    String::from_utf8(read_file(path)?)
        .map_err(|_| format!("{} is not UTF-8 text", shown_path(path)))
}

/// The value of environment variable `name`, at most [`MAX_BYTES`].
pub fn read_env(name: &str) -> Result<String, String> {
    let shown = shown(name);
    let value = std::env::var(name).map_err(|e| match e {
        std::env::VarError::NotPresent => format!("environment variable {shown} is not set"),
        std::env::VarError::NotUnicode(_) => {
            format!("environment variable {shown} is not UTF-8 text")
        }
    })?;
    if value.len() as u64 > MAX_BYTES {
        return Err(format!(
            "environment variable {shown} holds more than 1 MiB"
        ));
    }
    Ok(value)
}

/// How an error names where a secret came from: `environment variable X`
/// or the path, each only if it does not look like a secret.
pub fn env_source(name: &str) -> String {
    format!("environment variable {}", shown(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_where_a_path_or_a_name_belongs_is_never_repeated() {
        let seed = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU";
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----";
        let body = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg6R8nkL8";
        for secret in [seed, pem, body, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
            let e = read_file(Path::new(secret)).unwrap_err();
            assert!(!e.contains(&secret[..20]), "{e}");
            assert!(e.contains("not repeated"), "{e}");
            let e = read_env(secret).unwrap_err();
            assert!(!e.contains(&secret[..20]), "{e}");
        }
        // Short ones too: a 32-character key, a password.
        for secret in ["0123456789abcdef0123456789abcdef", "Tr0ub4dor&3", "hunter2"] {
            let e = read_file(Path::new(secret)).unwrap_err();
            assert!(!e.contains(secret), "{e}");
            let e = read_env(secret).unwrap_err();
            assert!(!e.contains(secret), "{e}");
        }
        // Ordinary paths and names are named.
        let e = read_file(Path::new("/etc/relay/nope.key")).unwrap_err();
        assert!(e.contains("/etc/relay/nope.key"), "{e}");
        let e = read_env("OUTBOX_TEST_SURELY_UNSET_77").unwrap_err();
        assert!(e.contains("OUTBOX_TEST_SURELY_UNSET_77 is not set"), "{e}");
    }

    #[test]
    fn only_small_regular_files_are_read() {
        for kernel in ["/proc/self/environ", "/proc/self/pagemap"] {
            let e = read_file(Path::new(kernel)).unwrap_err();
            assert!(e.contains("not a regular file"), "{kernel}: {e}");
        }
        assert!(
            read_file(Path::new("/dev/zero"))
                .unwrap_err()
                .contains("not a regular file")
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_file(dir.path())
                .unwrap_err()
                .contains("not a regular file")
        );
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_BYTES + 1).unwrap();
        assert!(read_file(&big).unwrap_err().contains("more than"));
    }
}
