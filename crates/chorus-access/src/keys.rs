//! The keys client tokens are verified with, each pinned to one algorithm.
//!
//! A node verifies with its `jwt_secret` (HS256, no key id) and with any keys configured in
//! `[auth]`: HMAC secrets (HS256/384/512), PEM public keys (RS*, PS*, ES256/384, EdDSA) and a
//! JWKS file. A token is checked against one key only, chosen by its `kid` when it names one,
//! else by its algorithm among the keys without an id; the token's `alg` must be the key's
//! own. That pinning is what makes key confusion impossible: an RSA public key is never used
//! as an HMAC secret, whatever algorithm a token claims.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

/// A key tokens may be signed with.
#[derive(Clone)]
pub struct VerificationKey {
    /// The key id tokens name it by (`kid`); `None`: chosen by algorithm.
    pub kid: Option<String>,
    /// The only algorithm accepted with this key.
    pub algorithm: Algorithm,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a configured key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The algorithm's name is not one of the supported ones.
    #[error(
        "unknown algorithm {name:?} (supported: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
    )]
    UnknownAlgorithm {
        /// The name given.
        name: String,
    },
    /// An HMAC algorithm was given a public key, or an asymmetric one a secret.
    #[error("algorithm {algorithm:?} needs {needs}")]
    WrongKeyKind {
        /// The algorithm.
        algorithm: Algorithm,
        /// `a secret` or `a PEM public key`.
        needs: &'static str,
    },
    /// An HMAC secret shorter than its hash (RFC 7518 3.2).
    #[error("an {algorithm:?} secret must be at least {min} bytes long")]
    ShortSecret {
        /// The algorithm.
        algorithm: Algorithm,
        /// Its minimum.
        min: usize,
    },
    /// The PEM text does not hold a key of the algorithm's family.
    #[error("not a PEM public key for {algorithm:?}: {source}")]
    Pem {
        /// The algorithm.
        algorithm: Algorithm,
        /// What the parser said.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The JWKS text is not a JSON key set.
    #[error("not a JWKS key set: {0}")]
    Jwks(#[from] serde_json::Error),
    /// A JWKS key without `kid` or `alg`: Chorus pins every key to one algorithm and finds
    /// JWKS keys by id.
    #[error("JWKS key {index} has no {missing} (every key needs `kid` and `alg`)")]
    JwksIncomplete {
        /// The key's position in the set.
        index: usize,
        /// `kid` or `alg`.
        missing: &'static str,
    },
    /// A JWKS key that cannot be used with its own algorithm.
    #[error("JWKS key {kid:?}: {source}")]
    JwksKey {
        /// The key's id.
        kid: String,
        /// What is wrong with it.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// Two keys with one id: a token naming it would be ambiguous.
    #[error("two keys have the id {kid:?}")]
    DuplicateKid {
        /// The id.
        kid: String,
    },
}

/// Parses an algorithm name as tokens spell it (`RS256`, `EdDSA`, ...).
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    name.parse()
        .map_err(|_| KeyError::UnknownAlgorithm { name: name.into() })
}

fn is_hmac(algorithm: Algorithm) -> bool {
    matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl VerificationKey {
    /// An HMAC key (HS256, HS384 or HS512).
    pub fn secret(kid: Option<String>, algorithm: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        let min = match algorithm {
            Algorithm::HS256 => 32,
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => {
                return Err(KeyError::WrongKeyKind {
                    algorithm,
                    needs: "a PEM public key (`public_key_file`), not a secret",
                });
            }
        };
        if secret.len() < min {
            return Err(KeyError::ShortSecret { algorithm, min });
        }
        Ok(Self::hmac_unchecked(kid, algorithm, secret))
    }

    /// The node's `jwt_secret` as an HS256 key; its length is checked by the configuration
    /// (at least 16 characters, kept for existing deployments).
    pub(crate) fn hmac_unchecked(kid: Option<String>, algorithm: Algorithm, secret: &[u8]) -> Self {
        VerificationKey {
            kid,
            algorithm,
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A public key in PEM (SubjectPublicKeyInfo, or PKCS#1 for RSA) for an asymmetric
    /// algorithm.
    pub fn public_pem(kid: Option<String>, algorithm: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let parsed = match algorithm {
            a if is_hmac(a) => {
                return Err(KeyError::WrongKeyKind {
                    algorithm,
                    needs: "a secret (`secret`), not a public key",
                });
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            _ => DecodingKey::from_ed_pem(pem),
        };
        let decoding = parsed.map_err(|source| KeyError::Pem { algorithm, source })?;
        Ok(VerificationKey {
            kid,
            algorithm,
            decoding,
        })
    }

    /// Every key of a JWKS document; each must name its `kid` and `alg`.
    pub fn jwks(json: &str) -> Result<Vec<Self>, KeyError> {
        let set: JwkSet = serde_json::from_str(json)?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone().ok_or(KeyError::JwksIncomplete {
                index,
                missing: "kid",
            })?;
            let name = jwk
                .common
                .key_algorithm
                .ok_or(KeyError::JwksIncomplete {
                    index,
                    missing: "alg",
                })?
                .to_string();
            let algorithm = parse_algorithm(&name)?;
            let decoding = DecodingKey::from_jwk(jwk).map_err(|source| KeyError::JwksKey {
                kid: kid.clone(),
                source,
            })?;
            if decoding.family() != algorithm.family() {
                return Err(KeyError::WrongKeyKind {
                    algorithm,
                    needs: "a JWK of its own key type (`kty`)",
                });
            }
            keys.push(VerificationKey {
                kid: Some(kid),
                algorithm,
                decoding,
            });
        }
        Ok(keys)
    }
}

/// Refuses a key list where two keys share an id.
pub(crate) fn check_unique_kids(keys: &[VerificationKey]) -> Result<(), KeyError> {
    let mut seen = std::collections::BTreeSet::new();
    for kid in keys.iter().filter_map(|k| k.kid.as_deref()) {
        if !seen.insert(kid) {
            return Err(KeyError::DuplicateKid { kid: kid.into() });
        }
    }
    Ok(())
}
