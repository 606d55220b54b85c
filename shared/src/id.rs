//! Validated blob ids and namespaces: `[A-Za-z0-9_-]{1,128}` (Soledad's rule).
//!
//! Every entry point (gRPC, HTTP, CLI, config) parses into these newtypes, so code past the
//! edge never sees an unchecked string; that is also what makes path traversal impossible when
//! ids become file names.

use std::fmt;
use std::str::FromStr;

/// Longest id or namespace, in bytes (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// A string that is not a valid id or namespace; the message quotes it and says the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty string.
    #[error("{kind} must not be empty: use 1 to 128 characters of A-Z a-z 0-9 _ -")]
    Empty {
        /// `"blob id"` or `"namespace"`.
        kind: &'static str,
    },
    /// Longer than [`MAX_NAME_LEN`].
    #[error("{kind} {value:?} is {len} characters long; the limit is 128")]
    TooLong {
        /// `"blob id"` or `"namespace"`.
        kind: &'static str,
        /// The first 140 characters of the rejected value.
        value: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("{kind} {value:?} has the character {bad:?}; only A-Z a-z 0-9 _ - are allowed")]
    BadChar {
        /// `"blob id"` or `"namespace"`.
        kind: &'static str,
        /// The rejected value.
        value: String,
        /// The first offending character.
        bad: char,
    },
}

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadChar {
            kind,
            value: s.chars().take(140).collect(),
            bad,
        });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(IdError::TooLong {
            kind,
            value: s.chars().take(140).collect(),
            len: s.len(),
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

name_type!(
    /// A blob id: `[A-Za-z0-9_-]{1,128}`.
    BlobId,
    "blob id"
);
name_type!(
    /// A namespace: `[A-Za-z0-9_-]{1,128}`; see [`Namespace::default`].
    Namespace,
    "namespace"
);

impl BlobId {
    /// A fresh random id: a UUIDv4 in simple form (32 lowercase hex digits).
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .expect("the OS random source failed"); // unrecoverable: no keys can be made either
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Self(hex::encode(b))
    }
}

impl Default for Namespace {
    /// `default`, the namespace of every call that names none.
    fn default() -> Self {
        Self("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet_up_to_128() {
        assert!(BlobId::new("a").is_ok());
        assert!(BlobId::new("A-z_09").is_ok());
        assert!(BlobId::new("x".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_with_a_message_quoting_the_value() {
        let e = BlobId::new("../etc/passwd").unwrap_err();
        assert!(matches!(e, IdError::BadChar { bad: '.', .. }));
        assert!(e.to_string().contains("\"../etc/passwd\""), "{e}");
        assert!(matches!(Namespace::new(""), Err(IdError::Empty { .. })));
        let long = BlobId::new("x".repeat(129)).unwrap_err();
        assert!(long.to_string().contains("129"), "{long}");
        assert!(BlobId::new("é").is_err());
        assert!(BlobId::new("a b").is_err());
    }

    #[test]
    fn random_ids_are_uuid_v4_simple() {
        let a = BlobId::random();
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(&a.as_str()[12..13], "4");
        assert_ne!(a, BlobId::random());
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<BlobId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<BlobId>("\"not ok\"").is_err());
    }
}
