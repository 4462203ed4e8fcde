//! Who may do what on a Chorus node: client tokens (JWT), roles, and the channel checks that
//! every client face runs the same way. Transport-neutral: the HTTP API (`chorus-http`) and
//! the QUIC and WebSocket edge (`chorus-gateway`) both call it, and neither imports the other
//! for it.

pub mod auth;
pub mod channel_token;
pub mod keys;
pub mod limits;

pub use auth::{
    AuthError, Authenticator, Claims, DEFAULT_MAX_TOKEN_LIFETIME, Operation, RevocationCheck,
    RolePermissions, mint_token,
};
pub use keys::{KeyError, VerificationKey, parse_algorithm};
pub use limits::{
    DEFAULT_DEVICE_RATE, DEFAULT_IP_RATE, KeyedLimits, OperationClass, Rate, RateLimited, RateSettings,
};
