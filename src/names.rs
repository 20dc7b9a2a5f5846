//! User and group names: the keys of every structure in the core.
//!
//! A name is validated once, at the edge, and from then on travels as a cheap
//! reference-counted string: cloning a `Name` into three hash maps costs three
//! atomic increments, not three string copies.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted name, in characters (all of them ASCII, so also in bytes).
pub const MAX_NAME_LEN: usize = 32;

/// A validated name: 1 to 32 characters of `[A-Za-z0-9_.-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

/// A user, as it appears in `/ws/{user}` and in `to`, `from`, `user` fields.
pub type UserId = Name;
/// A group, as it appears in `group` fields. Groups follow the user-name rule.
pub type GroupId = Name;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name has at most {MAX_NAME_LEN} characters, this one has {0}")]
    TooLong(usize),
    #[error("a name may only use letters, digits, '_', '.' and '-' (found {0:?})")]
    BadChar(char),
}

impl Name {
    /// Checks the naming rule. The check is O(len) with len <= 32.
    ///
    /// ```
    /// use vivachat::names::Name;
    /// assert_eq!(Name::parse("alice_2").unwrap().as_str(), "alice_2");
    /// assert!(Name::parse("#g1").is_err());
    /// assert!(Name::parse("").is_err());
    /// ```
    pub fn parse(raw: &str) -> Result<Name, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(NameError::BadChar(bad));
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(raw.len()));
        }
        Ok(Name(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Lets a `HashMap<Name, _>` be queried with a plain `&str`.
impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Reading a name from JSON (a snapshot) checks the rule again.
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Name::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_full_alphabet_and_the_length_limit() {
        assert!(Name::parse("a").is_ok());
        assert!(Name::parse("Alice_01.x-y").is_ok());
        assert!(Name::parse(&"z".repeat(32)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse(&"z".repeat(33)), Err(NameError::TooLong(33)));
        assert_eq!(Name::parse("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(Name::parse("a/b"), Err(NameError::BadChar('/')));
        assert_eq!(Name::parse("élodie"), Err(NameError::BadChar('é')));
        assert_eq!(Name::parse("#g1"), Err(NameError::BadChar('#')));
    }
}
