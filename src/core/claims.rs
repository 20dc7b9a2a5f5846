//! Name claims: who may connect as a name that someone has claimed with a token.
//!
//! `claims: HashMap<UserId, TokenHash>`. The look-up is O(1); the check that
//! follows is one Argon2id verification, slow on purpose (about 20 ms), so a
//! stolen copy of the hashes does not give the tokens back cheaply. Only the
//! hash is kept, never the token.
//!
//! The decision ([`Claims::check`]) is pure and instant; the slow hashing is
//! done by the caller off the chat path (see `server::admit`).

use std::collections::HashMap;
use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::names::UserId;

/// A token's Argon2id hash in the PHC string format (`$argon2id$v=19$m=...`),
/// which carries its own salt and parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(String);

impl TokenHash {
    /// A hash read back from storage; checked to be a PHC string.
    pub fn from_phc(phc: &str) -> Option<TokenHash> {
        PasswordHash::new(phc)
            .ok()
            .map(|_| TokenHash(phc.to_string()))
    }

    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

// Never print a hash by accident (logs, panics): it is as private as a password file.
impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// Hashes a token with a fresh random salt. Slow by design: call it off the chat path.
pub fn hash_token(token: &str) -> TokenHash {
    let mut salt = [0u8; 16];
    // The OS random source only fails on a broken system; a fixed salt would
    // still give a correct (only less private) hash, so do not fail the connection.
    let _ = getrandom::getrandom(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    let hash = Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .expect("the default Argon2 parameters accept any token length we allow");
    TokenHash(hash.to_string())
}

/// Does `token` match `hash`? Argon2 compares the outputs in constant time.
pub fn verify_token(token: &str, hash: &TokenHash) -> bool {
    PasswordHash::new(&hash.0).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok()
    })
}

/// What to do with a connection for `user` that did (or did not) bring a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Nobody claimed the name and no token was given: open, as in protocol v1.
    Open,
    /// Nobody claimed the name: hash the token and claim it.
    Claim,
    /// Claimed: the token must match this hash.
    Verify(TokenHash),
    /// Claimed, and no token was given.
    Refuse,
}

/// Claimed names and their token hashes.
#[derive(Debug, Default, Clone)]
pub struct Claims {
    claims: HashMap<UserId, TokenHash>,
}

impl Claims {
    /// O(1): the decision before any hashing.
    pub fn check(&self, user: &UserId, token: Option<&str>) -> Check {
        match (self.claims.get(user), token) {
            (None, None) => Check::Open,
            (None, Some(_)) => Check::Claim,
            (Some(hash), Some(_)) => Check::Verify(hash.clone()),
            (Some(_), None) => Check::Refuse,
        }
    }

    /// Claims `user` with `hash` unless someone claimed it first (two first
    /// connections can race while hashing); then returns the winner's hash.
    pub fn claim(&mut self, user: &UserId, hash: TokenHash) -> Result<(), TokenHash> {
        match self.claims.get(user) {
            Some(existing) => Err(existing.clone()),
            None => {
                self.claims.insert(user.clone(), hash);
                Ok(())
            }
        }
    }

    pub fn is_claimed(&self, user: &UserId) -> bool {
        self.claims.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Claimed names, sorted, for `/inspect` (which shows names, never hashes).
    pub fn names(&self) -> Vec<UserId> {
        let mut names: Vec<UserId> = self.claims.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Every claim, for storage.
    pub fn iter(&self) -> impl Iterator<Item = (&UserId, &TokenHash)> {
        self.claims.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    #[test]
    fn a_hash_verifies_its_token_only_and_hides_it() {
        let hash = hash_token("correct horse");
        assert!(verify_token("correct horse", &hash));
        assert!(!verify_token("correct hors", &hash));
        assert!(!verify_token("", &hash));
        assert!(hash.as_phc().starts_with("$argon2id$"));
        assert!(!hash.as_phc().contains("correct"));
        assert_eq!(format!("{hash:?}"), "TokenHash(..)");
        // Fresh salt each time: the same token never hashes the same twice.
        assert_ne!(hash_token("correct horse"), hash);
        assert_eq!(TokenHash::from_phc(hash.as_phc()), Some(hash));
        assert_eq!(TokenHash::from_phc("not a hash"), None);
    }

    #[test]
    fn the_decision_table() {
        let bob = Name::parse("bob").unwrap();
        let mut claims = Claims::default();
        assert_eq!(claims.check(&bob, None), Check::Open);
        assert_eq!(claims.check(&bob, Some("t")), Check::Claim);
        let hash = hash_token("t");
        claims.claim(&bob, hash.clone()).unwrap();
        assert_eq!(claims.check(&bob, None), Check::Refuse);
        assert_eq!(claims.check(&bob, Some("x")), Check::Verify(hash.clone()));
        // A second claim loses to the first and learns the winner's hash.
        assert_eq!(claims.claim(&bob, hash_token("x")), Err(hash));
        assert!(claims.is_claimed(&bob));
        assert_eq!(claims.names(), vec![bob]);
    }
}
