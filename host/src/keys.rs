//! Signing keys held by the host. Plugins name a key and ask the host to sign
//! (`outbox:relay/signing`); the key material never enters a plugin, and a
//! plugin may use only the keys its target was granted.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;

use crate::config::{KeyAlgorithm, KeyConfig};
use crate::snapshot::SnapshotKey;
use crate::{nats_creds, secret_source};

#[derive(Debug, thiserror::Error)]
#[error("key {name:?}: {message}")]
pub struct KeyError {
    pub name: String,
    pub message: String,
}

/// Every configured key, loaded.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, SnapshotKey>,
}

impl KeyRing {
    /// Loads each key from its environment variable or file.
    pub fn load(configs: &BTreeMap<String, KeyConfig>) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        for (name, config) in configs {
            keys.insert(name.clone(), load_key(name, config)?);
        }
        Ok(Self { keys })
    }

    pub fn get(&self, name: &str) -> Option<&SnapshotKey> {
        self.keys.get(name)
    }
}

fn load_key(name: &str, config: &KeyConfig) -> Result<SnapshotKey, KeyError> {
    let error = |message: String| KeyError {
        name: name.to_string(),
        message,
    };
    let (raw, from) = match (&config.env, &config.file) {
        (Some(var), None) => (
            secret_source::read_env(var).map_err(error)?,
            secret_source::env_source(var),
        ),
        (None, Some(file)) => (
            secret_source::read_text(file).map_err(error)?,
            secret_source::shown_path(file),
        ),
        _ => return Err(error("set exactly one of `env` and `file`".into())),
    };
    // Every message below names where the key came from, never what it holds.
    let error = |message: String| error(format!("{from}: {message}"));
    let raw = raw.trim_end_matches(['\n', '\r']);
    if raw.is_empty() {
        return Err(error("the key is empty".into()));
    }
    match config.algorithm {
        KeyAlgorithm::Hs256 => {
            // A Standard Webhooks secret: `whsec_` + base64 of the key bytes.
            if let Some(encoded) = raw.strip_prefix("whsec_") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| {
                        error("a `whsec_` secret must be base64 after the prefix".into())
                    })?;
                if !(24..=64).contains(&bytes.len()) {
                    return Err(error(format!(
                        "a `whsec_` secret must decode to 24 to 64 bytes, not {}",
                        bytes.len()
                    )));
                }
                return Ok(SnapshotKey::Hs256(bytes));
            }
            if raw.len() < 32 {
                return Err(error(
                    "an HS256 secret must be at least 32 bytes long".into(),
                ));
            }
            Ok(SnapshotKey::Hs256(raw.as_bytes().to_vec()))
        }
        KeyAlgorithm::EdDsa => {
            let text = raw.trim();
            let key = if nats_creds::is_creds(text) {
                // A NATS `.creds` file: its user seed (the JWT is for the
                // plugin, through `{ creds_jwt = ... }`).
                let seed = nats_creds::creds_seed(text).map_err(error)?;
                SigningKey::from_bytes(&seed)
            } else if nats_creds::looks_like_seed(text) {
                SigningKey::from_bytes(&nats_creds::user_seed(text).map_err(error)?)
            } else if text.starts_with("-----BEGIN") {
                SigningKey::from_pkcs8_pem(raw)
                    .map_err(|_| error("not a PKCS#8 PEM Ed25519 private key".into()))?
            } else {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| {
                        error(
                            "not base64 (expected a 32-byte Ed25519 seed, a PKCS#8 PEM key, \
                             an NKey user seed or a NATS .creds file)"
                                .into(),
                        )
                    })?;
                let seed: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| error("an Ed25519 seed is 32 bytes".into()))?;
                SigningKey::from_bytes(&seed)
            };
            Ok(SnapshotKey::EdDsa(key))
        }
    }
}

/// The signing a plugin instance may do: the key ring, and the key names its
/// target was granted.
#[derive(Debug, Clone, Default)]
pub struct SigningGrant {
    pub ring: std::sync::Arc<KeyRing>,
    pub granted: BTreeSet<String>,
}

impl SigningGrant {
    fn key(&self, name: &str, target: &str) -> Result<&SnapshotKey, String> {
        if !self.granted.contains(name) {
            return Err(format!(
                "key {name:?} is not granted to target {target:?} (grant it with `keys = [\"{name}\"]` on the target)"
            ));
        }
        self.ring
            .get(name)
            .ok_or_else(|| format!("key {name:?} is not configured"))
    }

    pub fn algorithm(&self, name: &str, target: &str) -> Result<String, String> {
        Ok(self.key(name, target)?.algorithm().to_string())
    }

    pub fn sign(&self, name: &str, target: &str, message: &[u8]) -> Result<Vec<u8>, String> {
        self.key(name, target)?
            .sign(message)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ed25519_dalek::Signer as _;

    use super::*;

    fn load_from_file(text: &str) -> Result<SnapshotKey, KeyError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, text).unwrap();
        load_key(
            "hook",
            &KeyConfig {
                algorithm: KeyAlgorithm::Hs256,
                env: None,
                file: Some(file),
            },
        )
    }

    #[test]
    fn a_standard_webhooks_secret_is_its_decoded_bytes() {
        // The example secret of the Standard Webhooks specification.
        let key = load_from_file("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let SnapshotKey::Hs256(bytes) = key else {
            panic!("not HS256")
        };
        assert_eq!(bytes.len(), 24);
        let e = load_from_file("whsec_not base64!").unwrap_err().to_string();
        assert!(e.contains("base64"), "{e}");
        let e = load_from_file("whsec_c2hvcnQ=").unwrap_err().to_string();
        assert!(e.contains("24 to 64 bytes"), "{e}");
    }

    fn load_eddsa(text: &str) -> (Result<SnapshotKey, KeyError>, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.creds");
        std::fs::write(&file, text).unwrap();
        let key = load_key(
            "nats",
            &KeyConfig {
                algorithm: KeyAlgorithm::EdDsa,
                env: None,
                file: Some(file.clone()),
            },
        );
        (key, file)
    }

    #[test]
    fn an_nkey_user_seed_or_a_creds_file_is_an_ed25519_key() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\neyJhIjoxfQ.eyJiIjoyfQ.c2ln\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        for text in [format!("{seed}\n"), creds] {
            let (key, _) = load_eddsa(&text);
            let Ok(SnapshotKey::EdDsa(key)) = key else {
                panic!("not EdDSA: {key:?}")
            };
            // Signs as the user: nkeys verifies with the user's public key.
            let signature = key.sign(b"nonce");
            nkeys::KeyPair::from_public_key(&user.public_key())
                .unwrap()
                .verify(b"nonce", &signature.to_bytes())
                .unwrap();
        }
    }

    #[test]
    fn a_bad_nkey_or_creds_file_names_the_key_and_the_file_not_the_content() {
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        let (key, file) = load_eddsa(&account);
        let e = key.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("key \"nats\": {}: ", file.display())),
            "{e}"
        );
        assert!(
            e.contains("not a user seed") && !e.contains(&account[2..]),
            "{e}"
        );
        let jwt_only = "-----BEGIN NATS USER JWT-----\neyJhIjoxfQ.eyJiIjoyfQ.c2ln\n------END NATS USER JWT------\n";
        let e = load_eddsa(jwt_only).0.unwrap_err().to_string();
        assert!(
            e.contains("without a -----BEGIN USER NKEY SEED----- block"),
            "{e}"
        );
        assert!(!e.contains("eyJ"), "{e}");
    }
}
