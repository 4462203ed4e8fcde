//! Channel patterns, for subscriptions and role permissions.
//!
//! A pattern is a channel name whose tokens may be `*` (exactly one token) or, as the last
//! token, `>` (one or more remaining tokens). `chat.*` matches `chat.1` but not `chat.1.x`;
//! `chat.>` matches both; `>` matches every channel.

mod index;

pub use index::PatternIndex;

use crate::channel::ChannelName;
use serde::{Deserialize, Serialize};

/// Why a string is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// `>` used before the last token.
    #[error("'>' may only be the last token of a pattern: {pattern:?}")]
    TailNotLast {
        /// The rejected pattern.
        pattern: String,
    },
    /// A token mixes wildcards with other characters, or the name rules are broken.
    #[error("invalid pattern {pattern:?}: {reason}")]
    Invalid {
        /// The rejected pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Token {
    Literal(String),
    One,
    Tail,
    /// `{sub}` in a role's pattern: the one token equal to the caller's subject.
    Subject,
}

/// A validated channel pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChannelPattern {
    source: String,
    tokens: Vec<Token>,
}

impl ChannelPattern {
    /// Parses and validates a pattern.
    pub fn new(pattern: impl Into<String>) -> Result<Self, PatternError> {
        Self::parse(pattern.into(), false)
    }

    /// A role's pattern, which may also hold `{sub}` as a whole token: the caller's own
    /// subject there (`user.{sub}.>` lets each user reach their own channels). A subject is
    /// compared with one channel token, never spliced into the pattern, so a subject with
    /// dots or wildcards in it matches nothing instead of widening the pattern.
    pub fn for_roles(pattern: impl Into<String>) -> Result<Self, PatternError> {
        Self::parse(pattern.into(), true)
    }

    fn parse(source: String, subject_allowed: bool) -> Result<Self, PatternError> {
        let invalid = |reason: String| PatternError::Invalid {
            pattern: source.clone(),
            reason,
        };
        // Validate as a channel name with the wildcards replaced by a legal token.
        let probe: String = source
            .split('.')
            .map(|t| match t {
                "*" | ">" => "x",
                "{sub}" if subject_allowed => "x",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(".");
        ChannelName::validate(&probe).map_err(|e| invalid(e.to_string()))?;
        let parts: Vec<&str> = source.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            tokens.push(match *part {
                "*" => Token::One,
                "{sub}" => Token::Subject,
                ">" if i + 1 == parts.len() => Token::Tail,
                ">" => {
                    return Err(PatternError::TailNotLast {
                        pattern: source.clone(),
                    });
                }
                literal => Token::Literal(literal.to_string()),
            });
        }
        Ok(ChannelPattern { source, tokens })
    }

    /// True when the pattern has no wildcard (it names exactly one channel).
    pub fn is_exact(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether `channel` matches (a `{sub}` token matches nothing: see [`Self::matches_for`]).
    pub fn matches(&self, channel: &str) -> bool {
        self.matches_subject(channel, None)
    }

    /// Whether `channel` matches for the caller `subject` (its `{sub}` tokens).
    pub fn matches_for(&self, channel: &str, subject: &str) -> bool {
        self.matches_subject(channel, Some(subject))
    }

    fn matches_subject(&self, channel: &str, subject: Option<&str>) -> bool {
        let mut names = channel.split('.');
        for token in &self.tokens {
            match token {
                Token::Tail => return names.next().is_some(),
                Token::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(literal) => {
                    if names.next() != Some(literal.as_str()) {
                        return false;
                    }
                }
                Token::Subject => {
                    if subject.is_none() || names.next() != subject {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// Whether every channel that `other` matches is also matched by `self`: a role allowed
    /// `chat.>` may subscribe to `chat.*.typing`, one allowed `chat.*` may not subscribe to
    /// `chat.>` (it would receive `chat.1.x`).
    pub fn covers(&self, other: &ChannelPattern) -> bool {
        self.covers_subject(other, None)
    }

    /// [`Self::covers`] for the caller `subject` (this pattern's `{sub}` tokens).
    pub fn covers_for(&self, other: &ChannelPattern, subject: &str) -> bool {
        self.covers_subject(other, Some(subject))
    }

    fn covers_subject(&self, other: &ChannelPattern, subject: Option<&str>) -> bool {
        let mut theirs = other.tokens.iter();
        for token in &self.tokens {
            let Some(their) = theirs.next() else {
                return false;
            };
            match (token, their) {
                (Token::Tail, _) => return true,
                (_, Token::Tail) => return false,
                (Token::One, _) => {}
                (Token::Subject, Token::Literal(b)) if subject == Some(b.as_str()) => {}
                (Token::Subject, _) | (_, Token::Subject) => return false,
                (Token::Literal(_), Token::One) => return false,
                (Token::Literal(a), Token::Literal(b)) if a != b => return false,
                (Token::Literal(_), Token::Literal(_)) => {}
            }
        }
        theirs.next().is_none()
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl TryFrom<String> for ChannelPattern {
    type Error = PatternError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ChannelPattern::new(value)
    }
}

impl From<ChannelPattern> for String {
    fn from(value: ChannelPattern) -> Self {
        value.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::new(s).unwrap()
    }

    #[test]
    fn wildcards_match_tokens() {
        assert!(p("chat.*").matches("chat.1"));
        assert!(!p("chat.*").matches("chat.1.x"));
        assert!(!p("chat.*").matches("chat"));
        assert!(p("chat.>").matches("chat.1.x"));
        assert!(!p("chat.>").matches("chat"));
        assert!(p(">").matches("anything.at.all"));
        assert!(p("a.*.c").matches("a.b.c"));
        assert!(!p("a.*.c").matches("a.b.d"));
        assert!(p("exact").matches("exact") && !p("exact").matches("exactly"));
        assert!(p("exact.name").is_exact() && !p("a.*").is_exact());
    }

    #[test]
    fn covers_only_patterns_whose_every_match_it_matches() {
        assert!(p(">").covers(&p("a.*")));
        assert!(p("chat.>").covers(&p("chat.*.typing")));
        assert!(p("chat.>").covers(&p("chat.>")));
        assert!(p("chat.*").covers(&p("chat.*")));
        assert!(p("chat.*").covers(&p("chat.1")));
        assert!(!p("chat.*").covers(&p("chat.>")));
        assert!(!p("chat.1").covers(&p("chat.*")));
        assert!(!p("chat.>").covers(&p("chat")));
        assert!(!p("chat.*").covers(&p("chat.1.x")));
        assert!(!p("a.b").covers(&p("a")));
        assert!(!p("other.>").covers(&p(">")));
    }

    #[test]
    fn rejects_malformed_patterns() {
        assert!(matches!(
            ChannelPattern::new("a.>.b"),
            Err(PatternError::TailNotLast { .. })
        ));
        assert!(matches!(
            ChannelPattern::new("a..b"),
            Err(PatternError::Invalid { .. })
        ));
        assert!(matches!(
            ChannelPattern::new("a*"),
            Err(PatternError::Invalid { .. })
        ));
        assert!(matches!(
            ChannelPattern::new(""),
            Err(PatternError::Invalid { .. })
        ));
    }

    #[test]
    fn a_subject_token_matches_the_callers_own_channels_only() {
        let own = ChannelPattern::for_roles("user.{sub}.>").unwrap();
        assert!(own.matches_for("user.alice.inbox", "alice"));
        assert!(!own.matches_for("user.bob.inbox", "alice"));
        assert!(!own.matches("user.alice.inbox"), "no subject, no match");
        // A subject is one token: dots and wildcards in it widen nothing.
        assert!(!own.matches_for("user.a.b.inbox", "a.b"));
        assert!(!own.matches_for("user.x.inbox", ">"));
        assert!(!own.matches_for("user.x.inbox", "*"));
        let theirs = ChannelPattern::new("user.alice.*").unwrap();
        assert!(own.covers_for(&theirs, "alice"));
        assert!(!own.covers_for(&theirs, "bob"));
        assert!(!own.covers_for(&ChannelPattern::new("user.*.inbox").unwrap(), "alice"));
        // Clients cannot use the placeholder in their own patterns.
        assert!(ChannelPattern::new("user.{sub}.>").is_err());
        assert!(
            ChannelPattern::for_roles("user.x{sub}.>").is_err(),
            "a whole token only"
        );
    }
}
