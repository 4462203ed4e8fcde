//! The `[auth]` table: the keys client tokens may be signed with besides `jwt_secret`, and
//! the issuer and audience tokens must name.

use anyhow::{Context, Result};
use chorus_access::{VerificationKey, parse_algorithm};
use serde::Deserialize;
use std::path::PathBuf;

/// The `[auth]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens must carry this `iss` (unset: not checked).
    pub issuer: Option<String>,
    /// Tokens must carry this in `aud` (unset: not checked).
    pub audience: Option<String>,
    /// A JWKS file of public keys; each key must have `kid` and `alg`.
    pub jwks_file: Option<PathBuf>,
    /// Keys given one by one.
    pub keys: Vec<KeyConfig>,
    /// Channel patterns read (subscribed to, history fetched) only with a subscription token
    /// for the user and the channel, whatever the roles (see `chorus token --channel`).
    pub private_channels: Vec<String>,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The id tokens name the key by (`kid`); without one, tokens without a `kid` are
    /// checked with it when their algorithm is this key's.
    pub kid: Option<String>,
    /// The only algorithm accepted with this key: HS256/384/512, RS256/384/512,
    /// PS256/384/512, ES256/384 or EdDSA.
    pub algorithm: String,
    /// PEM public key (asymmetric algorithms).
    pub public_key_file: Option<PathBuf>,
    /// The shared secret (HMAC algorithms), at least as long as the hash.
    pub secret: Option<String>,
}

impl AuthConfig {
    /// The private channel patterns, checked; the error names the bad one.
    pub fn private_channel_patterns(&self) -> Result<Vec<chorus_core::ChannelPattern>> {
        self.private_channels
            .iter()
            .map(|p| {
                chorus_core::ChannelPattern::new(p.clone())
                    .with_context(|| format!("`auth.private_channels`: {p:?}"))
            })
            .collect()
    }

    /// Reads and checks every configured key; the error names the entry and what is wrong.
    pub fn verification_keys(&self) -> Result<Vec<VerificationKey>> {
        let mut keys = Vec::new();
        for (i, key) in self.keys.iter().enumerate() {
            let at = || {
                format!(
                    "`auth.keys[{i}]`{}",
                    key.kid.as_ref().map(|k| format!(" ({k})")).unwrap_or_default()
                )
            };
            let algorithm = parse_algorithm(&key.algorithm).with_context(at)?;
            let parsed = match (&key.public_key_file, &key.secret) {
                (Some(file), None) => {
                    let pem = std::fs::read(file)
                        .with_context(|| format!("{}: reading {}", at(), file.display()))?;
                    VerificationKey::public_pem(key.kid.clone(), algorithm, &pem)
                }
                (None, Some(secret)) => {
                    VerificationKey::secret(key.kid.clone(), algorithm, secret.as_bytes())
                }
                _ => anyhow::bail!("{}: give exactly one of `public_key_file` and `secret`", at()),
            };
            keys.push(parsed.with_context(at)?);
        }
        if let Some(file) = &self.jwks_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("`auth.jwks_file`: reading {}", file.display()))?;
            keys.extend(
                VerificationKey::jwks(&text)
                    .with_context(|| format!("`auth.jwks_file` {}", file.display()))?,
            );
        }
        Ok(keys)
    }
}
