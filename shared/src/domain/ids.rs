use std::fmt;

use serde::{Deserialize, Serialize};

/// Ids end up in object names (`{tenant}/{call}.mp3`), table keys and URLs, so both are restricted to a
/// path-safe alphabet when they are parsed, not where they are used.
fn path_safe(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = path_safe(s, 63) && s.bytes().all(|b| !b.is_ascii_uppercase()) && !s.starts_with('-');
        if ok { Ok(Self(s.to_owned())) } else { Err(IdError::Tenant(s.chars().take(80).collect())) }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CallId(String);

impl CallId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if path_safe(s, 64) { Ok(Self(s.to_owned())) } else { Err(IdError::Call(s.chars().take(80).collect())) }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid tenant id {0:?}: use 1-63 characters of a-z, 0-9, '-' and '_'")]
    Tenant(String),
    #[error("invalid call id {0:?}: use 1-64 characters of A-Z, a-z, 0-9, '-' and '_'")]
    Call(String),
}

macro_rules! string_id {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}
string_id!(TenantId);
string_id!(CallId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_path_tricks() {
        assert!(TenantId::parse("acme-remodeling").is_ok());
        for bad in ["", "../etc", "a/b", "Acme", "-x", "a b", &"x".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(CallId::parse("CAL8154748ae6bd4e278a7cddd38a662f4f").is_ok());
        assert!(CallId::parse("766970532").is_ok());
        for bad in ["", "a/../b", "x.mp3", "a\0b"] {
            assert!(CallId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
