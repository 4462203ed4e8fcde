//! Revoked client tokens, replicated in shard 0 so that every node refuses them.
//!
//! A revocation names a user or one token id (`jti`). A user's revocation refuses the tokens
//! issued (`iat`) at or before it, and every token of theirs without `iat`; tokens issued
//! later pass, so the user can sign in again. Each revocation is kept only as long as a token
//! it refuses could still be valid (`until_s`: the revocation time plus the nodes' maximum
//! token lifetime), then forgotten: the list stays as small as the revocations in force.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeTarget {
    /// Every token of this user (`sub`) issued until now.
    User(String),
    /// The token with this id (`jti`).
    Token(String),
}

/// Revokes tokens on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeCommand {
    /// The user or token.
    pub target: RevokeTarget,
    /// Until when a refused token could still be valid, seconds since the Unix epoch.
    pub until_s: u64,
    /// The shard leader's stamp, ms since the Unix epoch.
    pub time_ms: u64,
}

/// One user's revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRevocation {
    /// Tokens issued at or before this second are refused.
    pub at_s: u64,
    /// Forgotten after this second.
    pub until_s: u64,
}

/// The revocations in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    users: BTreeMap<String, UserRevocation>,
    /// Token id to the second it is forgotten.
    tokens: BTreeMap<String, u64>,
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Its user was revoked after it was issued.
    User,
    /// The token itself was revoked.
    Token,
}

impl Revocations {
    /// Applies a revocation at `now_ms` (the shard's clock), forgetting the lapsed ones.
    pub fn revoke(&mut self, command: &RevokeCommand, now_ms: u64) {
        let now_s = now_ms / 1000;
        self.users.retain(|_, r| r.until_s >= now_s);
        self.tokens.retain(|_, until_s| *until_s >= now_s);
        match &command.target {
            RevokeTarget::User(user) => {
                let entry = self.users.entry(user.clone()).or_insert(UserRevocation {
                    at_s: now_s,
                    until_s: command.until_s,
                });
                entry.at_s = entry.at_s.max(now_s);
                entry.until_s = entry.until_s.max(command.until_s);
            }
            RevokeTarget::Token(id) => {
                let until_s = self.tokens.entry(id.clone()).or_insert(command.until_s);
                *until_s = (*until_s).max(command.until_s);
            }
        }
    }

    /// Whether a token of `user`, issued at `issued_at_s` (if it says), with id `token_id`
    /// (if it has one) is revoked.
    pub fn check(&self, user: &str, issued_at_s: Option<u64>, token_id: Option<&str>) -> Option<Revoked> {
        if token_id.is_some_and(|id| self.tokens.contains_key(id)) {
            return Some(Revoked::Token);
        }
        let revocation = self.users.get(user)?;
        match issued_at_s {
            Some(iat) if iat > revocation.at_s => None,
            _ => Some(Revoked::User),
        }
    }

    /// Revocations in force (users, token ids).
    pub fn len(&self) -> (usize, usize) {
        (self.users.len(), self.tokens.len())
    }

    /// Whether none is in force.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoke(target: RevokeTarget, until_s: u64, time_ms: u64) -> RevokeCommand {
        RevokeCommand {
            target,
            until_s,
            time_ms,
        }
    }

    #[test]
    fn a_users_tokens_issued_until_the_revocation_are_refused_and_later_ones_pass() {
        let mut r = Revocations::default();
        r.revoke(
            &revoke(RevokeTarget::User("eve".into()), 2_000, 1_000_000),
            1_000_000,
        );
        assert_eq!(r.check("eve", Some(999), None), Some(Revoked::User));
        assert_eq!(r.check("eve", Some(1_000), None), Some(Revoked::User));
        assert_eq!(r.check("eve", None, None), Some(Revoked::User), "no iat: refused");
        assert_eq!(r.check("eve", Some(1_001), None), None, "signed in again");
        assert_eq!(r.check("alice", Some(999), None), None);
    }

    #[test]
    fn a_token_id_is_refused_whoever_holds_it() {
        let mut r = Revocations::default();
        r.revoke(
            &revoke(RevokeTarget::Token("t-1".into()), 2_000, 1_000_000),
            1_000_000,
        );
        assert_eq!(r.check("alice", Some(5_000), Some("t-1")), Some(Revoked::Token));
        assert_eq!(r.check("alice", Some(5_000), Some("t-2")), None);
    }

    #[test]
    fn lapsed_revocations_are_forgotten_at_the_next_one() {
        let mut r = Revocations::default();
        r.revoke(
            &revoke(RevokeTarget::User("eve".into()), 2_000, 1_000_000),
            1_000_000,
        );
        r.revoke(
            &revoke(RevokeTarget::Token("t-1".into()), 2_000, 1_000_000),
            1_000_000,
        );
        assert_eq!(r.len(), (1, 1));
        r.revoke(
            &revoke(RevokeTarget::User("bob".into()), 9_000, 3_000_000),
            3_000_000,
        );
        assert_eq!(r.len(), (1, 0), "eve's and t-1's lapsed at 2,000 s");
        assert_eq!(r.check("eve", None, Some("t-1")), None);
    }
}
