//! Name tokens: made at random by a client, kept by the server only as an
//! Argon2id hash. Argon2 is slow by design (about 30 ms a check), so the
//! server runs it off the chat path (`server/admission.rs`); the core only
//! stores the opaque [`TokenHash`] and decides who must be checked.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::core::claims::TokenHash;

/// 128 random bits as 32 hex digits: a new token for one (server, name).
pub fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| std::io::Error::other(format!("the system's random source failed: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashes a token with a fresh random salt, in the PHC string format
/// (`$argon2id$v=19$m=...`), which carries its own salt and parameters.
pub fn hash(token: &str) -> TokenHash {
    let mut salt = [0u8; 16];
    // The OS random source only fails on a broken system; a fixed salt would
    // still give a correct (only less private) hash, so do not fail the connection.
    let _ = getrandom::getrandom(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    let hash = Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .expect("the default Argon2 parameters accept any token length we allow");
    TokenHash::new(hash.to_string())
}

/// Does `token` match `hash`? Argon2 compares the outputs in constant time.
pub fn verify(token: &str, hash: &TokenHash) -> bool {
    PasswordHash::new(hash.as_phc()).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A keyed BLAKE2b MAC of (user, token) under a key that lives only in this
/// process: what the server remembers of a token it has verified once, so the
/// next check is microseconds instead of Argon2's tens of milliseconds. Never
/// stored: without the key it is useless, and the key dies with the process.
pub type Digest = [u8; 32];

/// A fresh key for [`digest`], from the OS random source.
pub fn digest_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // As for a salt: a broken random source weakens, never breaks, the scheme.
    let _ = getrandom::getrandom(&mut key);
    key
}

pub fn digest(key: &[u8; 32], user: &str, token: &str) -> Digest {
    use blake2::digest::{consts::U32, Mac};
    let mut mac = blake2::Blake2bMac::<U32>::new_from_slice(key).expect("32 bytes is a valid key");
    mac.update(user.as_bytes());
    // A separator no name contains: ("ab", "c") and ("a", "bc") differ.
    mac.update(&[0]);
    mac.update(token.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Equal digests, compared without an early exit.
pub fn same_digest(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A hash read back from storage, if it is a well-formed PHC string.
pub fn parse(phc: &str) -> Option<TokenHash> {
    PasswordHash::new(phc)
        .ok()
        .map(|_| TokenHash::new(phc.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_key_user_and_token() {
        let (k1, k2) = (digest_key(), digest_key());
        let d = digest(&k1, "bob", "tok");
        assert!(same_digest(&d, &digest(&k1, "bob", "tok")));
        assert!(!same_digest(&d, &digest(&k2, "bob", "tok")));
        assert!(!same_digest(&d, &digest(&k1, "bob", "tok ")));
        assert!(!same_digest(
            &digest(&k1, "ab", "c"),
            &digest(&k1, "a", "bc")
        ));
    }

    #[test]
    fn a_hash_verifies_its_token_only_and_hides_it() {
        let hashed = hash("correct horse");
        assert!(verify("correct horse", &hashed));
        assert!(!verify("correct hors", &hashed));
        assert!(!verify("", &hashed));
        assert!(hashed.as_phc().starts_with("$argon2id$"));
        assert!(!hashed.as_phc().contains("correct"));
        assert_eq!(format!("{hashed:?}"), "TokenHash(..)");
        // Fresh salt each time: the same token never hashes the same twice.
        assert_ne!(hash("correct horse"), hashed);
        assert_eq!(parse(hashed.as_phc()), Some(hashed));
        assert_eq!(parse("not a hash"), None);
    }

    #[test]
    fn generated_tokens_are_128_bits_of_hex_and_differ() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
