//! Client-token authentication and role permissions, for every client face (HTTP, QUIC,
//! WebSocket).
//!
//! Tokens are JWTs with the claims `sub`, `exp`, `roles` (and optionally `nbf`, `iat`,
//! `device`, `iss`, `aud`), signed with the node's `jwt_secret` (HS256) or one of the keys of
//! `[auth]` (`crate::keys`).
//! Each role maps to channel patterns per operation; a request is allowed when any of the
//! caller's roles has a pattern matching the channel.

use crate::keys::{KeyError, VerificationKey, check_unique_kids};
use chorus_core::{ChannelPattern, ErrorCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::limits::{Limits, OperationClass, Rate, RateLimited, RateSettings};
use std::net::IpAddr;

impl From<RateLimited> for AuthError {
    fn from(limited: RateLimited) -> Self {
        AuthError::RateLimited {
            limit: limited.limit,
            retry_after_ms: limited.retry_after.as_millis().max(1) as u64,
        }
    }
}

/// The claims Chorus reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Role names, looked up in the node's role table.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The device, when the client names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// When the token was issued, seconds since the Unix epoch: a user's revocation refuses
    /// the tokens issued until it, and those without `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The token's id, for revoking this token alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Set in a subscription token only: the one channel it lets its user read (see
    /// [`crate::channel_token`]). Such a token opens no connection and calls no API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// Says whether a verified token was revoked since (the node reads the replicated list).
pub type RevocationCheck = Arc<dyn Fn(&Claims) -> Option<chorus_core::revocation::Revoked> + Send + Sync>;

/// What a role may do, compiled from configuration.
#[derive(Debug, Clone, Default)]
pub struct RolePermissions {
    /// Channels the role may publish to.
    pub publish: Vec<ChannelPattern>,
    /// Channels the role may read or subscribe to.
    pub subscribe: Vec<ChannelPattern>,
    /// Cluster administration.
    pub admin: bool,
    /// The role's own rates per operation class, instead of the node's (`per_minute` 0:
    /// none). A user with several roles gets the most generous.
    pub rates: BTreeMap<OperationClass, Rate>,
}

/// An operation checked against the role table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Publishing to a channel.
    Publish,
    /// Reading a channel's history or subscribing to it.
    Subscribe,
    /// Cluster administration.
    Admin,
}

/// Why a request is not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token (send 'Authorization: Bearer <jwt>')")]
    Missing,
    /// The token does not verify.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token names a key (`kid`) this node does not have.
    #[error("token signed with unknown key id {kid:?}")]
    UnknownKey {
        /// The token's `kid`.
        kid: String,
    },
    /// No key of this node accepts the token's algorithm (for its `kid`, if it names one).
    #[error("token algorithm {algorithm} is not accepted{}", kid.as_ref().map(|k| format!(" for key {k:?}")).unwrap_or_default())]
    AlgorithmNotAccepted {
        /// The token's `alg`.
        algorithm: String,
        /// The token's `kid`.
        kid: Option<String>,
    },
    /// The token's issuer (`iss`) is not the configured one.
    #[error("token issuer (iss) is not the one this node accepts")]
    WrongIssuer,
    /// The token's audience (`aud`) does not include the configured one.
    #[error("token audience (aud) does not include the one this node accepts")]
    WrongAudience,
    /// The token, or every token of its user issued until then, was revoked.
    #[error("token revoked ({})", match what { chorus_core::revocation::Revoked::User => "every token of this user issued before the revocation", chorus_core::revocation::Revoked::Token => "this token id" })]
    Revoked {
        /// What was revoked.
        what: chorus_core::revocation::Revoked,
    },
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` (not before) is still in the future.
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    /// The token is valid for longer than this node accepts (a stolen token must not work
    /// for years).
    #[error(
        "token valid for {remaining_s} s more; this node accepts at most {max_s} s (max_token_lifetime_s)"
    )]
    LifetimeTooLong {
        /// Seconds from now to the token's `exp`.
        remaining_s: u64,
        /// The configured maximum.
        max_s: u64,
    },
    /// A rate was exceeded (see [`crate::limits`]).
    #[error("rate limit exceeded ({limit}); retry in {retry_after_ms} ms")]
    RateLimited {
        /// Which: an operation class (`publish`, ...), `device`, or a per-address limit.
        limit: &'static str,
        /// When the next request would be allowed, ms from now.
        retry_after_ms: u64,
    },
    /// A subscription token was given where a client token belongs.
    #[error(
        "a subscription token (for channel {channel:?}) opens no connection and calls no API; give it with a subscribe or history request"
    )]
    SubscriptionTokenMisused {
        /// The channel the token is for.
        channel: String,
    },
    /// A private channel was asked for without a subscription token.
    #[error(
        "channel {channel:?} is private: reading it needs a subscription token for it (private_channels)"
    )]
    SubscriptionTokenRequired {
        /// The private channel.
        channel: String,
    },
    /// The subscription token is not this user's, or not for this channel.
    #[error(
        "the subscription token is for user {token_user:?} and channel {token_channel:?}, not for this user and channel {channel:?}"
    )]
    SubscriptionTokenMismatch {
        /// The token's subject.
        token_user: String,
        /// The token's channel.
        token_channel: String,
        /// The channel asked for.
        channel: String,
    },
    /// A client token was given as a subscription token.
    #[error("not a subscription token (it has no `channel` claim)")]
    NotASubscriptionToken,
    /// Collaborative sessions are not served on private channels (a session's document is
    /// its channel's events, which only subscription tokens may read).
    #[error("channel {channel:?} is private: collaborative sessions are not served on private channels")]
    PrivateSession {
        /// The private channel.
        channel: String,
    },
    /// The token verifies but its roles do not allow the operation.
    #[error("user {user:?} with roles {roles:?} may not {operation} {target}")]
    Forbidden {
        /// The token's subject.
        user: String,
        /// The token's roles.
        roles: Vec<String>,
        /// `publish to`, `read`, `administer`.
        operation: &'static str,
        /// The channel or `the cluster`.
        target: String,
    },
}

impl AuthError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing
            | AuthError::Invalid(_)
            | AuthError::UnknownKey { .. }
            | AuthError::AlgorithmNotAccepted { .. }
            | AuthError::WrongIssuer
            | AuthError::WrongAudience
            | AuthError::Revoked { .. }
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::LifetimeTooLong { .. }
            | AuthError::SubscriptionTokenMisused { .. }
            | AuthError::NotASubscriptionToken => ErrorCode::Unauthorized,
            AuthError::Forbidden { .. }
            | AuthError::SubscriptionTokenRequired { .. }
            | AuthError::SubscriptionTokenMismatch { .. }
            | AuthError::PrivateSession { .. } => ErrorCode::Forbidden,
            AuthError::RateLimited { .. } => ErrorCode::RateLimited,
        }
    }
}

/// Verifies tokens and checks permissions.
#[derive(Clone)]
pub struct Authenticator {
    /// Every key, each with the validation its algorithm needs.
    keys: Arc<Vec<(VerificationKey, Validation)>>,
    /// Required `iss`, when configured.
    issuer: Option<String>,
    /// Required member of `aud`, when configured.
    audience: Option<String>,
    roles: BTreeMap<String, RolePermissions>,
    max_lifetime: Duration,
    revocations: Option<RevocationCheck>,
    /// Every rate's buckets, shared by the clones.
    limits: Arc<Limits>,
    /// Channels read only with a subscription token (`[auth] private_channels`).
    pub(crate) private_channels: Arc<Vec<ChannelPattern>>,
}

fn limits_for(settings: RateSettings, roles: &BTreeMap<String, RolePermissions>) -> Limits {
    Limits::new(settings, roles.values().flat_map(|r| r.rates.values().copied()))
}

/// The longest a token may still be valid for, by default: the origin document's refresh
/// token lifetime (its access tokens live 1 h).
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Seconds a token's `exp`, `nbf` and lifetime may be off by (clocks of the issuer and the
/// node differ a little).
const TOKEN_LEEWAY_S: u64 = 5;

impl Authenticator {
    /// An authenticator for HS256 tokens signed with `secret` (and no `kid`).
    pub fn new(secret: &str, roles: BTreeMap<String, RolePermissions>) -> Self {
        let key = VerificationKey::hmac_unchecked(None, Algorithm::HS256, secret.as_bytes());
        Authenticator {
            keys: Arc::new(vec![(key, Validation::new(Algorithm::HS256))]),
            issuer: None,
            audience: None,
            limits: Arc::new(limits_for(RateSettings::default(), &roles)),
            roles,
            max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
            revocations: None,
            private_channels: Arc::new(Vec::new()),
        }
        .with_validations()
    }

    /// Also accepts tokens signed with `keys` (ids must be unique).
    pub fn with_keys(mut self, keys: Vec<VerificationKey>) -> Result<Self, KeyError> {
        let mut all: Vec<VerificationKey> = self.keys.iter().map(|(k, _)| k.clone()).collect();
        all.extend(keys);
        check_unique_kids(&all)?;
        self.keys = Arc::new(
            all.into_iter()
                .map(|k| (k, Validation::new(Algorithm::HS256)))
                .collect(),
        );
        Ok(self.with_validations())
    }

    /// Requires tokens to carry `iss` = `issuer`.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self.with_validations()
    }

    /// Requires tokens to carry `audience` in `aud`.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self.with_validations()
    }

    /// Rebuilds each key's validation: its own algorithm only, `exp` and `sub` required,
    /// `nbf` checked, 5 s of leeway for clocks, `iss` and `aud` when configured.
    fn with_validations(mut self) -> Self {
        let keys = self
            .keys
            .iter()
            .map(|(key, _)| {
                let mut validation = Validation::new(key.algorithm);
                validation.leeway = TOKEN_LEEWAY_S;
                validation.validate_nbf = true;
                let mut required = vec!["exp", "sub"];
                if let Some(issuer) = &self.issuer {
                    validation.set_issuer(&[issuer]);
                    required.push("iss");
                }
                match &self.audience {
                    Some(audience) => {
                        validation.set_audience(&[audience]);
                        required.push("aud");
                    }
                    // A token may name audiences this node does not check.
                    None => validation.validate_aud = false,
                }
                validation.set_required_spec_claims(&required);
                (key.clone(), validation)
            })
            .collect();
        self.keys = Arc::new(keys);
        self
    }

    /// The one key `token` may be verified with: the one its `kid` names, else the key
    /// without an id for its algorithm. Its algorithm must be the key's own.
    fn key_for(&self, token: &str) -> Result<&(VerificationKey, Validation), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let not_accepted = || AuthError::AlgorithmNotAccepted {
            algorithm: format!("{:?}", header.alg),
            kid: header.kid.clone(),
        };
        match &header.kid {
            Some(kid) => {
                let found = self
                    .keys
                    .iter()
                    .find(|(k, _)| k.kid.as_deref() == Some(kid))
                    .ok_or_else(|| AuthError::UnknownKey { kid: kid.clone() })?;
                if found.0.algorithm != header.alg {
                    return Err(not_accepted());
                }
                Ok(found)
            }
            None => self
                .keys
                .iter()
                .find(|(k, _)| k.kid.is_none() && k.algorithm == header.alg)
                .ok_or_else(not_accepted),
        }
    }

    /// The node's rates (those of users whose roles set none, per device, per address).
    pub fn with_rates(mut self, settings: RateSettings) -> Self {
        self.limits = Arc::new(limits_for(settings, &self.roles));
        self
    }

    /// Registers the counter of refusals, `chorus_rate_limited_total{limit}`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.limits.register(registry);
    }

    /// Counts one request of any kind by `claims`' device (the user and its `device` claim)
    /// against the device rate.
    pub fn check_device_rate(&self, claims: &Claims) -> Result<(), AuthError> {
        if self.limits.settings.device.per_minute == 0 {
            return Ok(());
        }
        let device = format!(
            "{}\u{0}{}",
            claims.sub,
            claims.device.as_deref().unwrap_or_default()
        );
        self.limits.check_device(device).map_err(AuthError::from)
    }

    /// Counts one request of `class` by `claims`' user against their rate for it: the most
    /// generous of their roles' own rates, else the node's.
    pub fn check_rate(&self, claims: &Claims, class: OperationClass) -> Result<(), AuthError> {
        let own: Vec<Rate> = claims
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r)?.rates.get(&class).copied())
            .collect();
        let rate = if own.iter().any(|r| r.per_minute == 0) {
            Rate::UNLIMITED
        } else {
            let default = self.limits.settings.classes.get(&class).copied();
            own.into_iter().max().or(default).unwrap_or(Rate::UNLIMITED)
        };
        self.limits
            .check_user(class, &claims.sub, rate)
            .map_err(AuthError::from)
    }

    /// Counts one QUIC or WebSocket connect from `ip`, before its token is checked.
    pub fn check_connect_rate(&self, ip: IpAddr) -> Result<(), AuthError> {
        self.limits.check_connect(ip).map_err(AuthError::from)
    }

    /// Counts one HTTP API request from `ip`, before its token is checked.
    pub fn check_http_request_rate(&self, ip: IpAddr) -> Result<(), AuthError> {
        self.limits.check_http_request(ip).map_err(AuthError::from)
    }

    /// Refuses tokens that `check` finds revoked.
    pub fn with_revocations(mut self, check: RevocationCheck) -> Self {
        self.revocations = Some(check);
        self
    }

    /// Refuses `claims` if they were revoked since they were verified.
    pub fn check_revoked(&self, claims: &Claims) -> Result<(), AuthError> {
        match self.revocations.as_ref().and_then(|check| check(claims)) {
            Some(what) => Err(AuthError::Revoked { what }),
            None => Ok(()),
        }
    }

    /// The longest a token may still be valid for.
    pub fn max_lifetime(&self) -> Duration {
        self.max_lifetime
    }

    /// Refuses tokens whose `exp` is further than `max` away.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Claims, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        self.verify(token.trim())
    }

    /// Verifies a client token (not a subscription token).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify_any(token)?;
        if let Some(channel) = claims.channel {
            return Err(AuthError::SubscriptionTokenMisused { channel });
        }
        Ok(claims)
    }

    /// Verifies a token of either kind: signature, algorithm, times, lifetime, revocation.
    pub(crate) fn verify_any(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let (key, validation) = self.key_for(token)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let now_s = chorus_cluster::clock::unix_ms() / 1000;
        let remaining_s = claims.exp.saturating_sub(now_s);
        // The same leeway as for `exp` and `nbf`: a token minted for exactly the maximum on a
        // clock a little ahead of this node's still passes.
        if remaining_s > self.max_lifetime.as_secs() + TOKEN_LEEWAY_S {
            return Err(AuthError::LifetimeTooLong {
                remaining_s,
                max_s: self.max_lifetime.as_secs(),
            });
        }
        self.check_revoked(&claims)?;
        Ok(claims)
    }

    /// Checks that `claims` allow `operation` on `channel` (ignored for [`Operation::Admin`]).
    pub fn authorize(&self, claims: &Claims, operation: Operation, channel: &str) -> Result<(), AuthError> {
        let allowed = claims
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .any(|role| match operation {
                Operation::Publish => role.publish.iter().any(|p| p.matches_for(channel, &claims.sub)),
                Operation::Subscribe => role.subscribe.iter().any(|p| p.matches_for(channel, &claims.sub)),
                Operation::Admin => role.admin,
            });
        if allowed {
            return Ok(());
        }
        let (operation, target) = match operation {
            Operation::Publish => ("publish to", format!("channel {channel:?}")),
            Operation::Subscribe => ("read", format!("channel {channel:?}")),
            Operation::Admin => ("administer", "the cluster".to_string()),
        };
        Err(AuthError::Forbidden {
            user: claims.sub.clone(),
            roles: claims.roles.clone(),
            operation,
            target,
        })
    }
}

impl Authenticator {
    /// Checks that `claims` allow subscribing to every channel `pattern` matches.
    pub fn authorize_pattern(&self, claims: &Claims, pattern: &ChannelPattern) -> Result<(), AuthError> {
        let allowed = claims
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .any(|role| role.subscribe.iter().any(|p| p.covers_for(pattern, &claims.sub)));
        if allowed {
            return Ok(());
        }
        Err(AuthError::Forbidden {
            user: claims.sub.clone(),
            roles: claims.roles.clone(),
            operation: "subscribe to",
            target: format!("every channel of pattern {:?}", pattern.as_str()),
        })
    }
}

/// Mints an HS256 token (for `chorus token` and tests).
pub fn mint_token(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-0123456789";

    fn authenticator() -> Authenticator {
        let roles = BTreeMap::from([
            (
                "admin".to_string(),
                RolePermissions {
                    publish: vec![ChannelPattern::new(">").unwrap()],
                    subscribe: vec![ChannelPattern::new(">").unwrap()],
                    admin: true,
                    rates: BTreeMap::new(),
                },
            ),
            (
                "reader".to_string(),
                RolePermissions {
                    subscribe: vec![ChannelPattern::new("public.*").unwrap()],
                    ..Default::default()
                },
            ),
        ]);
        Authenticator::new(SECRET, roles)
    }

    fn claims(roles: &[&str], exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            device: None,
            iat: None,
            jti: None,
            channel: None,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn verifies_and_authorizes_by_role() {
        let auth = authenticator();
        let token = mint_token(SECRET, &claims(&["reader"], now() + 60)).unwrap();
        let c = auth.verify_header(Some(&format!("Bearer {token}"))).unwrap();
        assert!(auth.authorize(&c, Operation::Subscribe, "public.news").is_ok());
        let denied = auth.authorize(&c, Operation::Publish, "public.news").unwrap_err();
        assert_eq!(denied.code(), ErrorCode::Forbidden);
        assert!(auth.authorize(&c, Operation::Admin, "").is_err());
        let pattern = |s: &str| ChannelPattern::new(s).unwrap();
        assert!(auth.authorize_pattern(&c, &pattern("public.*")).is_ok());
        assert!(auth.authorize_pattern(&c, &pattern("public.>")).is_err());
    }

    #[test]
    fn rejects_missing_bad_and_expired_tokens() {
        let auth = authenticator();
        assert_eq!(auth.verify_header(None), Err(AuthError::Missing));
        assert!(matches!(auth.verify("garbage"), Err(AuthError::Invalid(_))));
        let forged = mint_token("another-secret-0123456", &claims(&["admin"], now() + 60)).unwrap();
        assert!(matches!(auth.verify(&forged), Err(AuthError::Invalid(_))));
        let expired = mint_token(SECRET, &claims(&["admin"], now() - 600)).unwrap();
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
    }

    fn mint_json(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    /// Found by probing: `nbf` was never checked, and `exp` = 2^64-1 was accepted.
    #[test]
    fn refuses_tokens_not_valid_yet_and_tokens_that_live_too_long() {
        let auth = authenticator().with_max_lifetime(Duration::from_secs(3600));
        let later = mint_json(serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(auth.verify(&later), Err(AuthError::NotYetValid));
        let started = mint_json(serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() - 1}));
        assert!(auth.verify(&started).is_ok());
        let forever = mint_json(serde_json::json!({"sub": "a", "exp": u64::MAX}));
        assert!(
            matches!(
                auth.verify(&forever),
                Err(AuthError::LifetimeTooLong { max_s: 3600, .. })
            ),
            "{:?}",
            auth.verify(&forever)
        );
        let two_hours = mint_token(SECRET, &claims(&["admin"], now() + 7200)).unwrap();
        let refused = auth.verify(&two_hours).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Unauthorized);
        assert!(refused.to_string().contains("max_token_lifetime_s"), "{refused}");
        let one_hour = mint_token(SECRET, &claims(&["admin"], now() + 3500)).unwrap();
        assert!(auth.verify(&one_hour).is_ok());
        // The default: the origin document's 7 days.
        let eight_days = mint_token(SECRET, &claims(&["admin"], now() + 8 * 24 * 3600)).unwrap();
        assert!(matches!(
            authenticator().verify(&eight_days),
            Err(AuthError::LifetimeTooLong { .. })
        ));
    }

    #[test]
    fn publishes_are_limited_per_user_at_the_rate_of_their_roles() {
        let rate = Rate {
            per_minute: 60,
            burst: 3,
        };
        let mut roles = BTreeMap::new();
        roles.insert("member".to_string(), RolePermissions::default());
        roles.insert(
            "service".to_string(),
            RolePermissions {
                rates: BTreeMap::from([(OperationClass::Publish, Rate::UNLIMITED)]),
                ..Default::default()
            },
        );
        let settings = RateSettings {
            classes: BTreeMap::from([(OperationClass::Publish, rate)]),
            ..RateSettings::default()
        };
        let auth = Authenticator::new(SECRET, roles).with_rates(settings);
        let member = claims(&["member"], now() + 60);
        for _ in 0..3 {
            auth.check_rate(&member, OperationClass::Publish).unwrap();
        }
        let refused = auth.check_rate(&member, OperationClass::Publish).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::RateLimited);
        assert!(
            matches!(refused, AuthError::RateLimited { limit: "publish", retry_after_ms } if (1..=1000).contains(&retry_after_ms)),
            "{refused:?}"
        );
        let service = claims(&["member", "service"], now() + 60);
        let service = Claims {
            sub: "robot".into(),
            ..service
        };
        for _ in 0..100 {
            auth.check_rate(&service, OperationClass::Publish).unwrap();
        }
    }

    #[test]
    fn a_role_pattern_with_the_subject_gives_each_user_their_own_channels() {
        let roles = BTreeMap::from([(
            "member".to_string(),
            RolePermissions {
                publish: vec![ChannelPattern::for_roles("user.{sub}.>").unwrap()],
                subscribe: vec![ChannelPattern::for_roles("user.{sub}.>").unwrap()],
                ..Default::default()
            },
        )]);
        let auth = Authenticator::new(SECRET, roles);
        let alice = claims(&["member"], now() + 60);
        assert!(
            auth.authorize(&alice, Operation::Publish, "user.alice.inbox")
                .is_ok()
        );
        assert!(
            auth.authorize(&alice, Operation::Publish, "user.bob.inbox")
                .is_err()
        );
        assert!(
            auth.authorize(&alice, Operation::Subscribe, "user.alice.a.b")
                .is_ok()
        );
        let own = ChannelPattern::new("user.alice.*").unwrap();
        assert!(auth.authorize_pattern(&alice, &own).is_ok());
        let everyone = ChannelPattern::new("user.*.inbox").unwrap();
        assert!(auth.authorize_pattern(&alice, &everyone).is_err());
    }
}
