//! SASL client mechanisms, without I/O: PLAIN (RFC 4616) and SCRAM-SHA-256 /
//! SCRAM-SHA-512 (RFC 5802, RFC 7677). `wire.rs` carries their messages in
//! `SaslAuthenticate` requests.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

/// The mechanism, as the `sasl_mechanism` key names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "PLAIN" => Ok(Mechanism::Plain),
            "SCRAM-SHA-256" => Ok(Mechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(Mechanism::ScramSha512),
            other => Err(format!(
                "unknown mechanism {other:?} (known: \"PLAIN\", \"SCRAM-SHA-256\", \"SCRAM-SHA-512\")"
            )),
        }
    }

    /// The name sent in `SaslHandshake`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A user name and password to log in with.
#[derive(Clone)]
pub struct Credentials {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// PLAIN's one message: `\0user\0password`.
pub fn plain(c: &Credentials) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.username.len() + c.password.len() + 2);
    out.push(0);
    out.extend_from_slice(c.username.as_bytes());
    out.push(0);
    out.extend_from_slice(c.password.as_bytes());
    out
}

/// A SCRAM exchange in progress: the client's first message is sent, the
/// server's first is awaited.
pub struct Scram {
    hash: Mechanism,
    password: String,
    nonce: String,
    first_bare: String,
}

/// After the client's final message: what the server must prove.
#[derive(Debug)]
pub struct ScramFinal {
    expected_server_signature: Vec<u8>,
}

impl Scram {
    /// Starts an exchange with `nonce` (printable, no `,`); returns it and the
    /// client's first message.
    pub fn start(c: &Credentials, nonce: &str) -> (Scram, Vec<u8>) {
        let name = c.username.replace('=', "=3D").replace(',', "=2C");
        let first_bare = format!("n={name},r={nonce}");
        let first = format!("n,,{first_bare}").into_bytes();
        (
            Scram {
                hash: c.mechanism,
                password: c.password.clone(),
                nonce: nonce.to_owned(),
                first_bare,
            },
            first,
        )
    }

    /// The client's final message, answering the server's first.
    pub fn answer(self, server_first: &[u8]) -> Result<(ScramFinal, Vec<u8>), String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "the server's first SCRAM message is not UTF-8".to_string())?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for field in server_first.split(',') {
            match field.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = Some(v),
                Some(("i=", v)) => iterations = Some(v),
                Some(("e=", v)) => return Err(format!("the server refused: {v}")),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(format!("malformed server-first message {server_first:?}"));
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the server's nonce does not extend the client's".into());
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| "the server's salt is not base64".to_string())?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|&i| (1..=1_000_000).contains(&i))
            .ok_or_else(|| format!("the server's iteration count {iterations:?} is not usable"))?;

        let salted = self.pbkdf2(self.password.as_bytes(), &salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        let stored_key = self.digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = self.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = self.hmac(&salted, b"Server Key");
        let expected_server_signature = self.hmac(&server_key, auth_message.as_bytes());
        let message = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        Ok((
            ScramFinal {
                expected_server_signature,
            },
            message,
        ))
    }

    fn hmac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self.hash {
            Mechanism::ScramSha512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            _ => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn digest(&self, data: &[u8]) -> Vec<u8> {
        match self.hash {
            Mechanism::ScramSha512 => Sha512::digest(data).to_vec(),
            _ => Sha256::digest(data).to_vec(),
        }
    }

    fn pbkdf2(&self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self.hash {
            Mechanism::ScramSha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            _ => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

impl ScramFinal {
    /// Checks the server's final message: the server proves it knows the
    /// password too, or says why it refused.
    pub fn verify(self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).unwrap_or("");
        if let Some(error) = text.strip_prefix("e=") {
            return Err(format!("the server refused: {error}"));
        }
        let signature = text
            .split(',')
            .find_map(|f| f.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| format!("malformed server-final message {text:?}"))?;
        if signature == self.expected_server_signature {
            Ok(())
        } else {
            Err("the server's signature is wrong: it does not know the password".into())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The example exchange of RFC 7677, section 3.
    #[test]
    fn scram_sha_256_matches_rfc_7677() {
        let c = Credentials {
            mechanism: Mechanism::ScramSha256,
            username: "user".into(),
            password: "pencil".into(),
        };
        let (scram, first) = Scram::start(&c, "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (last, message) = scram.answer(server_first).unwrap();
        assert_eq!(
            String::from_utf8(message).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        last.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn a_wrong_server_signature_or_a_refusal_fails() {
        let c = Credentials {
            mechanism: Mechanism::ScramSha512,
            username: "a,b=c".into(),
            password: "p".into(),
        };
        let (scram, first) = Scram::start(&c, "abc");
        assert_eq!(first, b"n,,n=a=2Cb=3Dc,r=abc");
        assert!(
            scram
                .answer(b"r=xyz,s=AAAA,i=10")
                .unwrap_err()
                .contains("nonce")
        );
        let (scram, _) = Scram::start(&c, "abc");
        let (last, _) = scram.answer(b"r=abcdef,s=AAAA,i=10").unwrap();
        assert!(last.verify(b"v=AAAA").unwrap_err().contains("signature"));
        let (scram, _) = Scram::start(&c, "abc");
        let (last, _) = scram.answer(b"r=abcdef,s=AAAA,i=10").unwrap();
        assert!(
            last.verify(b"e=invalid-proof")
                .unwrap_err()
                .contains("invalid-proof")
        );
    }

    #[test]
    fn plain_is_nul_separated() {
        let c = Credentials {
            mechanism: Mechanism::Plain,
            username: "u".into(),
            password: "pw".into(),
        };
        assert_eq!(plain(&c), b"\0u\0pw");
        assert!(Mechanism::parse("GSSAPI").is_err());
    }
}
