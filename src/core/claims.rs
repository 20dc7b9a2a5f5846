//! Name claims: who may connect as a name that someone has claimed with a token.
//!
//! `claims: HashMap<UserId, TokenHash>`. The look-up is O(1); the check that
//! follows is one Argon2id verification, slow on purpose (about 20 ms), so a
//! stolen copy of the hashes does not give the tokens back cheaply. Only the
//! hash is kept, never the token.
//!
//! The decision ([`Claims::check`]) is pure and instant; the slow hashing
//! (the `tokens` module) is done by the server off the chat path.

use std::collections::HashMap;
use std::fmt;

use crate::names::UserId;

/// A token's Argon2id hash in the PHC string format (`$argon2id$v=19$m=...`),
/// which carries its own salt and parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(String);

impl TokenHash {
    /// Wraps a hash made (or checked) by the shell's `tokens` module; the core never looks inside.
    pub fn new(phc: String) -> TokenHash {
        TokenHash(phc)
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

    /// Every claim, for a cluster node to put back in a Redis that lost them.
    pub fn all(&self) -> Vec<(UserId, TokenHash)> {
        self.claims
            .iter()
            .map(|(user, hash)| (user.clone(), hash.clone()))
            .collect()
    }

    /// Claimed names, sorted, for `/inspect` (which shows names, never hashes).
    pub fn names(&self) -> Vec<UserId> {
        let mut names: Vec<UserId> = self.claims.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    #[test]
    fn the_decision_table() {
        let bob = Name::parse("bob").unwrap();
        let mut claims = Claims::default();
        assert_eq!(claims.check(&bob, None), Check::Open);
        assert_eq!(claims.check(&bob, Some("t")), Check::Claim);
        let hash = TokenHash::new("$argon2id$t".into());
        claims.claim(&bob, hash.clone()).unwrap();
        assert_eq!(claims.check(&bob, None), Check::Refuse);
        assert_eq!(claims.check(&bob, Some("x")), Check::Verify(hash.clone()));
        // A second claim loses to the first and learns the winner's hash.
        assert_eq!(
            claims.claim(&bob, TokenHash::new("$argon2id$x".into())),
            Err(hash)
        );
        assert!(claims.is_claimed(&bob));
        assert_eq!(claims.names(), vec![bob]);
    }
}
