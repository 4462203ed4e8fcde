//! Subscription tokens for private channels.
//!
//! Role patterns say who may read a family of channels; a private channel (one direct
//! conversation, one customer's order feed) is decided by the application, channel by
//! channel. Its backend mints a subscription token: a JWT signed with one of the node's keys,
//! whose claims are the user (`sub`), the one channel it grants (`channel`) and `exp` (and
//! optionally `iat`, `jti`, `nbf`, `iss`, `aud`, checked as for client tokens).
//!
//! - A channel matching `[auth] private_channels` is read (subscribed to, its history
//!   fetched) only with a subscription token for that user and that channel, whatever the
//!   user's roles. Pattern subscriptions never deliver its events.
//! - Any other channel is read when the user's roles allow it, or with a subscription token
//!   for it (a grant beyond the roles).
//! - A subscription token opens no connection and calls no API; a client token is no
//!   subscription token. Revoking the user refuses their subscription tokens from then on
//!   (and closes their connections, with every subscription on them); revoking a
//!   subscription token's id refuses it from then on, while a subscription already made with
//!   it lasts until its connection closes.
//! - Collaborative sessions are not served on private channels: a session's document is its
//!   channel's events, and session requests carry no subscription token.
//!
//! The token is checked when the subscription is made (and made again after a reconnect),
//! not again when it expires: an application that must cut a reader off revokes the user or
//! the token id, which closes the user's connections.

use crate::auth::{AuthError, Authenticator, Claims, Operation};
use chorus_core::ChannelPattern;
use std::sync::Arc;

impl Authenticator {
    /// Channels matching `patterns` are read only with a subscription token.
    pub fn with_private_channels(mut self, patterns: Vec<ChannelPattern>) -> Self {
        self.private_channels = Arc::new(patterns);
        self
    }

    /// The private channel patterns (`[auth] private_channels`).
    pub fn private_channels(&self) -> &[ChannelPattern] {
        &self.private_channels
    }

    /// Whether `channel` is read only with a subscription token.
    pub fn is_private(&self, channel: &str) -> bool {
        self.private_channels.iter().any(|p| p.matches(channel))
    }

    /// Refuses collaborative-session requests on a private channel.
    pub fn check_session_channel(&self, channel: &str) -> Result<(), AuthError> {
        if self.is_private(channel) {
            return Err(AuthError::PrivateSession {
                channel: channel.to_string(),
            });
        }
        Ok(())
    }

    /// Verifies a subscription token: a token of this node's keys with a `channel` claim.
    pub fn verify_subscription_token(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify_any(token)?;
        if claims.channel.is_none() {
            return Err(AuthError::NotASubscriptionToken);
        }
        Ok(claims)
    }

    /// Checks that `claims` may read `channel` (subscribe to it, fetch its history), with
    /// the subscription token the request carried, if any (empty: none).
    pub fn authorize_read(
        &self,
        claims: &Claims,
        channel: &str,
        subscription_token: Option<&str>,
    ) -> Result<(), AuthError> {
        match subscription_token.filter(|t| !t.is_empty()) {
            Some(token) => {
                let granted = self.verify_subscription_token(token)?;
                let token_channel = granted.channel.unwrap_or_default();
                if granted.sub != claims.sub || token_channel != channel {
                    return Err(AuthError::SubscriptionTokenMismatch {
                        token_user: granted.sub,
                        token_channel,
                        channel: channel.to_string(),
                    });
                }
                Ok(())
            }
            None if self.is_private(channel) => Err(AuthError::SubscriptionTokenRequired {
                channel: channel.to_string(),
            }),
            None => self.authorize(claims, Operation::Subscribe, channel),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::auth::{AuthError, Authenticator, Claims, RolePermissions, mint_token};
    use chorus_core::{ChannelPattern, ErrorCode};
    use std::collections::BTreeMap;

    const SECRET: &str = "channel-token-secret-0123456789";

    fn token(sub: &str, roles: &[&str], channel: Option<&str>) -> String {
        let now = chorus_cluster::clock::unix_ms() / 1000;
        let claims = Claims {
            sub: sub.into(),
            exp: now + 300,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            device: None,
            iat: Some(now),
            jti: None,
            channel: channel.map(str::to_string),
        };
        mint_token(SECRET, &claims).unwrap()
    }

    fn authenticator() -> Authenticator {
        let member = RolePermissions {
            subscribe: vec![ChannelPattern::new("chat.>").unwrap()],
            ..Default::default()
        };
        Authenticator::new(SECRET, BTreeMap::from([("member".to_string(), member)]))
            .with_private_channels(vec![ChannelPattern::new("chat.dm.>").unwrap()])
    }

    #[test]
    fn a_private_channel_is_read_with_its_users_token_only() {
        let auth = authenticator();
        let alice = auth.verify(&token("alice", &["member"], None)).unwrap();
        let refused = auth
            .authorize_read(&alice, "chat.dm.alice-bob", None)
            .unwrap_err();
        assert!(
            matches!(refused, AuthError::SubscriptionTokenRequired { .. }),
            "{refused}"
        );
        assert_eq!(refused.code(), ErrorCode::Forbidden);

        let hers = token("alice", &[], Some("chat.dm.alice-bob"));
        assert!(
            auth.authorize_read(&alice, "chat.dm.alice-bob", Some(&hers))
                .is_ok()
        );
        // Another channel, another user's token: refused.
        let refused = auth
            .authorize_read(&alice, "chat.dm.alice-carol", Some(&hers))
            .unwrap_err();
        assert!(
            matches!(refused, AuthError::SubscriptionTokenMismatch { .. }),
            "{refused}"
        );
        let bobs = token("bob", &[], Some("chat.dm.alice-bob"));
        assert!(
            auth.authorize_read(&alice, "chat.dm.alice-bob", Some(&bobs))
                .is_err()
        );
        // A client token is no subscription token, nor the other way round.
        let client = token("alice", &["member"], None);
        let refused = auth
            .authorize_read(&alice, "chat.dm.alice-bob", Some(&client))
            .unwrap_err();
        assert_eq!(refused, AuthError::NotASubscriptionToken);
        let refused = auth.verify(&hers).unwrap_err();
        assert!(
            matches!(refused, AuthError::SubscriptionTokenMisused { .. }),
            "{refused}"
        );
        assert_eq!(refused.code(), ErrorCode::Unauthorized);
    }

    #[test]
    fn a_token_grants_a_channel_beyond_the_roles() {
        let auth = authenticator();
        let alice = auth.verify(&token("alice", &["member"], None)).unwrap();
        assert!(
            auth.authorize_read(&alice, "chat.room", None).is_ok(),
            "the roles allow it"
        );
        assert!(auth.authorize_read(&alice, "orders.42", None).is_err());
        let grant = token("alice", &[], Some("orders.42"));
        assert!(auth.authorize_read(&alice, "orders.42", Some(&grant)).is_ok());
        let unsigned = &grant[..grant.rfind('.').unwrap()];
        let forged = format!("{unsigned}.c2lnbmF0dXJl");
        assert!(auth.authorize_read(&alice, "orders.42", Some(&forged)).is_err());
    }
}
