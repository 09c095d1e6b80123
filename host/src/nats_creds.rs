//! NATS credentials, the one place that knows their formats: an NKey seed
//! (`SU…`: base32 of a prefix, the 32-byte Ed25519 seed and a CRC16) and a
//! `.creds` file, which decorates a user JWT and the user's seed:
//!
//! ```text
//! -----BEGIN NATS USER JWT-----
//! eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ...
//! ------END NATS USER JWT------
//!
//! ************************* IMPORTANT *************************
//! ...
//! -----BEGIN USER NKEY SEED-----
//! SUAM...
//! ------END USER NKEY SEED------
//! ```
//!
//! A block is a line of dashes (`---…---`), one line of content and another
//! line of dashes, as the NATS clients read it. The first block is the JWT;
//! the seed is the block that holds one.
//!
//! The seed is a secret: `[keys.<name>]` loads it into the host, which signs
//! the server's nonce for the plugin (`outbox:relay/signing`); the plugin gets
//! the JWT alone (`{ creds_jwt = "user.creds" }`). No error here quotes any
//! part of the text it was given.

/// The public-key prefix byte of a user (`U`), as [`nkeys::decode_seed`]
/// returns it.
const USER_PREFIX: u8 = 20 << 3;
/// An encoded seed is 58 characters: `S`, the key type, base32.
const SEED_LEN: usize = 58;
/// Characters of an encoded NKey private key: base32 of 1 + 64 + 2 bytes.
const PRIVATE_KEY_LEN: usize = 108;

/// The user JWT of a `.creds` file's text.
pub fn jwt(text: &str) -> Result<String, String> {
    let blocks = blocks(text);
    let Some(first) = blocks.first() else {
        return Err("not a NATS .creds file: no -----BEGIN NATS USER JWT----- block".to_string());
    };
    if !is_jwt(first) {
        return Err(
            "not a NATS .creds file: its first block is not a user JWT (header.claims.signature)"
                .to_string(),
        );
    }
    Ok((*first).to_string())
}

/// The user's 32-byte Ed25519 seed in a `.creds` file's text.
pub fn creds_seed(text: &str) -> Result<[u8; 32], String> {
    let Some(seed) = blocks(text).into_iter().find(|b| looks_like_seed(b)) else {
        return Err(
            "a NATS .creds file without a -----BEGIN USER NKEY SEED----- block".to_string(),
        );
    };
    user_seed(seed)
}

/// Decodes an NKey user seed (`SU…`) into its 32-byte Ed25519 seed.
pub fn user_seed(seed: &str) -> Result<[u8; 32], String> {
    let seed = seed.trim();
    let (prefix, bytes) = nkeys::decode_seed(seed).map_err(|_| {
        "not a valid NKey seed (58 base32 characters starting with `S`, with a correct checksum)"
            .to_string()
    })?;
    if prefix != USER_PREFIX {
        // The second letter names the kind (A: account, O: operator, N:
        // server...); it says nothing of the key.
        let kind = seed.chars().nth(1).unwrap_or('?');
        return Err(format!(
            "an NKey seed of another kind (S{kind}…), not a user seed (SU…): NATS signs a client in with the user's seed"
        ));
    }
    Ok(bytes)
}

/// Whether `text` is, or holds, a NATS credential a plugin must not get:
/// a `.creds` seed block, or an NKey seed or private key anywhere in it (in
/// a line of its own, `NAME=SU…`, JSON, quotes: any run of the base32
/// alphabet that decodes as one).
pub fn holds_seed(text: &str) -> bool {
    let found = |text: &str| {
        text.split(|c: char| !(c.is_ascii_uppercase() || ('2'..='7').contains(&c)))
            .any(|run| {
                (looks_like_seed(run) && nkeys::decode_seed(run).is_ok())
                    || looks_like_private_key(run)
            })
    };
    // Also in lower or mixed case, and split by dashes, spaces or underscores.
    let folded: String = text
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '_' | '\t'))
        .collect::<String>()
        .to_ascii_uppercase();
    text.lines()
        .any(|line| line.contains("NKEY SEED") && is_marker(line.trim()))
        || found(text)
        || found(&folded)
}

/// Whether `run` has the shape of an NKey private key (`P…`: the 64-byte
/// Ed25519 key, base32 with its prefix and checksum).
fn looks_like_private_key(run: &str) -> bool {
    run.len() == PRIVATE_KEY_LEN && run.starts_with('P')
}

/// Whether `text` is a `.creds` file (as opposed to a bare seed or a PEM
/// key, which also starts with a line of dashes).
pub fn is_creds(text: &str) -> bool {
    blocks(text)
        .into_iter()
        .any(|b| is_jwt(b) || looks_like_seed(b))
}

/// Whether `text` has the shape of an NKey seed (it may still not decode).
pub fn looks_like_seed(text: &str) -> bool {
    text.len() == SEED_LEN
        && text.starts_with('S')
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// The content of each `---…---` / content / `---…---` block, in order.
fn blocks(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 < lines.len() {
        if is_marker(lines[i]) && !lines[i + 1].is_empty() && is_marker(lines[i + 2]) {
            out.push(lines[i + 1]);
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

/// A decoration line: at least three dashes, something, three dashes.
fn is_marker(line: &str) -> bool {
    line.len() >= 6 && line.starts_with("---") && line.ends_with("---")
}

/// Three non-empty base64url parts: `header.claims.signature`.
fn is_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVIn0.c2ln";

    /// A `.creds` file as `nsc generate creds` writes it.
    fn creds(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }

    #[test]
    fn a_creds_file_yields_its_jwt_and_its_seed() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let text = creds(JWT, &seed);
        assert!(is_creds(&text) && holds_seed(&text));
        assert_eq!(jwt(&text).unwrap(), JWT);
        let bytes = creds_seed(&text).unwrap();
        assert_eq!(bytes, user_seed(&seed).unwrap());
        // The seed is the user's: its public key is the user's.
        let signing = ed25519_dalek::SigningKey::from_bytes(&bytes);
        let (_, public) = nkeys::from_public_key(&user.public_key()).unwrap();
        assert_eq!(signing.verifying_key().to_bytes(), public);
        // CRLF line ends too.
        let crlf = text.replace('\n', "\r\n");
        assert_eq!(jwt(&crlf).unwrap(), JWT);
        assert_eq!(creds_seed(&crlf).unwrap(), bytes);
    }

    #[test]
    fn what_is_not_a_user_credential_is_refused_without_quoting_it() {
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        let e = user_seed(&account).unwrap_err();
        assert!(e.contains("(SA…)") && !e.contains(&account[2..]), "{e}");
        let user = nkeys::KeyPair::new_user().seed().unwrap();
        let mut broken = user.clone().into_bytes();
        broken[20] = if broken[20] == b'A' { b'B' } else { b'A' };
        let broken = String::from_utf8(broken).unwrap();
        let e = user_seed(&broken).unwrap_err();
        assert!(e.contains("checksum") && !e.contains(&broken), "{e}");

        let e = jwt("just a password").unwrap_err();
        assert!(e.contains("no -----BEGIN NATS USER JWT-----"), "{e}");
        let e = creds_seed(&creds(JWT, "not-a-seed")).unwrap_err();
        assert!(e.contains("without a -----BEGIN USER NKEY SEED"), "{e}");
        // A seed in the first block is never taken for the JWT.
        let e = jwt(&creds(&user, JWT)).unwrap_err();
        assert!(e.contains("not a user JWT") && !e.contains(&user), "{e}");
    }

    #[test]
    fn seeds_are_found_wherever_they_are_and_pem_keys_are_not_creds() {
        let user = nkeys::KeyPair::new_user().seed().unwrap();
        assert!(holds_seed(&user));
        assert!(holds_seed(&format!("\n  {user}  \n")));
        assert!(holds_seed(&creds(JWT, &user)));
        assert!(
            holds_seed("-----BEGIN USER NKEY SEED-----\n(elided)\n------END USER NKEY SEED------"),
            "the seed block's decoration alone is enough"
        );
        assert!(!holds_seed("s3cret-password"));
        assert!(!holds_seed(&creds(JWT, "").replace("NKEY SEED", "X")));
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
        assert!(!is_creds(pem) && !holds_seed(pem));
    }
}
