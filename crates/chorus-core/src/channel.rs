//! Channel names.
//!
//! A channel is a dot-separated name such as `chat.room-42` or `user.7.feed`. The rules keep
//! names printable, bounded and unambiguous for subscription patterns, where `*` matches one
//! token and `>` the rest:
//!
//! - 1 to [`MAX_CHANNEL_LEN`] bytes;
//! - tokens separated by `.`, none empty;
//! - token characters: ASCII letters, digits, and `-` `_` `:` `@` `=` `+`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Why a string is not a valid channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// The name is the empty string.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`] bytes.
    #[error("channel name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The length of the rejected name.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("channel name has an empty token at position {position} (names are tokens separated by '.')")]
    EmptyToken {
        /// The 0-based index of the empty token.
        position: usize,
    },
    /// A character outside the allowed set.
    #[error(
        "channel name has the character {character:?} at byte {index}; allowed are letters, digits, '.', '-', '_', ':', '@', '=', '+'"
    )]
    BadCharacter {
        /// The offending character.
        character: char,
        /// Its byte index.
        index: usize,
    },
}

/// A validated channel name. Construct with [`ChannelName::new`] or `parse()`.
///
/// Shared, not copied: a publish's name is held by its command, the channel's log, the
/// applied event and every answer, so a clone is a reference count, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ChannelName(Arc<str>);

impl Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '@' | '=' | '+')
}

impl ChannelName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, ChannelNameError> {
        let name = name.into();
        Self::validate(&name)?;
        Ok(ChannelName(name.into()))
    }

    /// Checks `name` against the rules without allocating.
    pub fn validate(name: &str) -> Result<(), ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong {
                len: name.len(),
                max: MAX_CHANNEL_LEN,
            });
        }
        if let Some((index, character)) = name.char_indices().find(|&(_, c)| c != '.' && !is_token_char(c)) {
            return Err(ChannelNameError::BadCharacter { character, index });
        }
        if let Some(position) = name.split('.').position(str::is_empty) {
            return Err(ChannelNameError::EmptyToken { position });
        }
        Ok(())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ChannelName {
    type Error = ChannelNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ChannelName::new(value)
    }
}

impl From<ChannelName> for String {
    fn from(value: ChannelName) -> Self {
        value.0.to_string()
    }
}

impl std::str::FromStr for ChannelName {
    type Err = ChannelNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChannelName::new(s)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["chat", "chat.room-42", "user.7.feed", "a:b@c=d+e_f", "X"] {
            assert!(ChannelName::new(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_bad_names_with_specific_errors() {
        assert_eq!(ChannelName::new(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::new("a..b"),
            Err(ChannelNameError::EmptyToken { position: 1 })
        );
        assert_eq!(
            ChannelName::new(".a"),
            Err(ChannelNameError::EmptyToken { position: 0 })
        );
        assert_eq!(
            ChannelName::new("chat room"),
            Err(ChannelNameError::BadCharacter {
                character: ' ',
                index: 4
            })
        );
        assert!(matches!(
            ChannelName::new("a.*"),
            Err(ChannelNameError::BadCharacter { character: '*', .. })
        ));
        assert!(matches!(
            ChannelName::new("é"),
            Err(ChannelNameError::BadCharacter { .. })
        ));
        let long = "a".repeat(MAX_CHANNEL_LEN + 1);
        assert_eq!(
            ChannelName::new(long),
            Err(ChannelNameError::TooLong { len: 256, max: 255 })
        );
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<ChannelName>("\"ok.name\"").is_ok());
        assert!(serde_json::from_str::<ChannelName>("\"bad name\"").is_err());
    }
}
