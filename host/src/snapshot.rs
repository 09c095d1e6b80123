//! Signed auth-context snapshots: compact JWS (RFC 7515) tokens that the
//! `auth_snapshot` injector attaches to deliveries, signed with a key the
//! host holds. Consumers verify them here, or with any JOSE/JWT library.
//!
//! Header: `{"alg": "HS256" | "EdDSA", "typ": "JWT", "kid": <key name>}`.
//! Claims: `sub`, `tenant` (optional), `scopes`, `iat`, `jti` (the message
//! id), `target`, and `iss`/`exp` when configured.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A key as JOSE names its algorithm.
#[derive(Clone)]
pub enum SnapshotKey {
    /// HMAC-SHA256 with a shared secret.
    Hs256(Vec<u8>),
    /// Ed25519 signing (the host side).
    EdDsa(SigningKey),
    /// Ed25519 verification only (the consumer side).
    EdDsaPublic(VerifyingKey),
}

impl std::fmt::Debug for SnapshotKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotKey::Hs256(_) => "SnapshotKey::Hs256(***)",
            SnapshotKey::EdDsa(_) => "SnapshotKey::EdDsa(***)",
            SnapshotKey::EdDsaPublic(_) => "SnapshotKey::EdDsaPublic",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("the token is signed with {found}, but the key is for {expected}")]
    Algorithm {
        found: String,
        expected: &'static str,
    },
    #[error("bad signature")]
    Signature,
    #[error("this key can only verify")]
    VerifyOnly,
}

impl SnapshotKey {
    /// The JOSE `alg` value.
    pub fn algorithm(&self) -> &'static str {
        match self {
            SnapshotKey::Hs256(_) => "HS256",
            SnapshotKey::EdDsa(_) | SnapshotKey::EdDsaPublic(_) => "EdDSA",
        }
    }

    /// Signs `message`, returning the raw signature bytes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SnapshotError> {
        match self {
            SnapshotKey::Hs256(secret) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret)
                    .map_err(|_| SnapshotError::Malformed("empty HMAC key".into()))?;
                mac.update(message);
                Ok(mac.finalize().into_bytes().to_vec())
            }
            SnapshotKey::EdDsa(key) => Ok(key.sign(message).to_bytes().to_vec()),
            SnapshotKey::EdDsaPublic(_) => Err(SnapshotError::VerifyOnly),
        }
    }

    fn verify_signature(&self, message: &[u8], signature: &[u8]) -> Result<(), SnapshotError> {
        match self {
            SnapshotKey::Hs256(secret) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret)
                    .map_err(|_| SnapshotError::Malformed("empty HMAC key".into()))?;
                mac.update(message);
                mac.verify_slice(signature)
                    .map_err(|_| SnapshotError::Signature)
            }
            SnapshotKey::EdDsa(key) => verify_ed25519(&key.verifying_key(), message, signature),
            SnapshotKey::EdDsaPublic(key) => verify_ed25519(key, message, signature),
        }
    }
}

fn verify_ed25519(
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SnapshotError> {
    let signature = Signature::from_slice(signature).map_err(|_| SnapshotError::Signature)?;
    key.verify(message, &signature)
        .map_err(|_| SnapshotError::Signature)
}

/// Verifies a compact JWS with `key` and returns its claims. Checks the
/// signature and that `alg` matches the key; checks `exp` when present.
pub fn verify(token: &str, key: &SnapshotKey) -> Result<serde_json::Value, SnapshotError> {
    let mut parts = token.trim().split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SnapshotError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| SnapshotError::Malformed(format!("{what} is not base64url: {e}")))
    };
    let header: serde_json::Value = serde_json::from_slice(&decode(header_b64, "header")?)
        .map_err(|e| SnapshotError::Malformed(format!("header is not JSON: {e}")))?;
    let alg = header["alg"].as_str().unwrap_or_default();
    if alg != key.algorithm() {
        return Err(SnapshotError::Algorithm {
            found: alg.to_string(),
            expected: key.algorithm(),
        });
    }
    let signing_input = &token.trim()[..header_b64.len() + 1 + claims_b64.len()];
    key.verify_signature(signing_input.as_bytes(), &decode(sig_b64, "signature")?)?;
    let claims: serde_json::Value = serde_json::from_slice(&decode(claims_b64, "claims")?)
        .map_err(|e| SnapshotError::Malformed(format!("claims are not JSON: {e}")))?;
    if let Some(exp) = claims["exp"].as_i64() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now > exp {
            return Err(SnapshotError::Malformed(format!("expired at {exp}")));
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &SnapshotKey, claims: &str) -> String {
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, key.algorithm());
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    #[test]
    fn round_trips_and_rejects_tampering() {
        for key in [
            SnapshotKey::Hs256(b"secret".to_vec()),
            SnapshotKey::EdDsa(SigningKey::from_bytes(&[7; 32])),
        ] {
            let t = token(&key, r#"{"sub":"ada"}"#);
            assert_eq!(verify(&t, &key).unwrap()["sub"], "ada");
            let mut tampered = t.clone();
            tampered.replace_range(t.len() - 3.., "AAA");
            assert!(verify(&tampered, &key).is_err());
        }
        let t = token(&SnapshotKey::Hs256(b"secret".to_vec()), "{}");
        assert_eq!(
            verify(&t, &SnapshotKey::Hs256(b"other".to_vec())),
            Err(SnapshotError::Signature)
        );
    }
}
