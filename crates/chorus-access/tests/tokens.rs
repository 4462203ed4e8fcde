//! Client tokens: one test per accepted algorithm and per attack on the verification.

use chorus_access::{AuthError, Authenticator, Claims, VerificationKey};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::collections::BTreeMap;

const JWT_SECRET: &str = "node-jwt-secret-0123456789";
const HS512_SECRET: &[u8] = b"a-64-byte-hs512-secret-0123456789-0123456789-0123456789-01234567";

const RSA_KEY: &[u8] = include_bytes!("../testdata/rsa.key.pem");
const RSA_PUB: &[u8] = include_bytes!("../testdata/rsa.pub.pem");
const EC_KEY: &[u8] = include_bytes!("../testdata/ec.key.pem");
const EC_PUB: &[u8] = include_bytes!("../testdata/ec.pub.pem");
const ED_KEY: &[u8] = include_bytes!("../testdata/ed.key.pem");
const ED_PUB: &[u8] = include_bytes!("../testdata/ed.pub.pem");

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "exp": now() + 300, "roles": ["member"]})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_KEY).unwrap()
}
fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_KEY).unwrap()
}
fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(ED_KEY).unwrap()
}

/// A node with its jwt_secret and one key of every kind.
fn node() -> Authenticator {
    Authenticator::new(JWT_SECRET, BTreeMap::new())
        .with_keys(vec![
            VerificationKey::secret(Some("hs512".into()), Algorithm::HS512, HS512_SECRET).unwrap(),
            VerificationKey::public_pem(Some("rs".into()), Algorithm::RS256, RSA_PUB).unwrap(),
            VerificationKey::public_pem(Some("ps".into()), Algorithm::PS256, RSA_PUB).unwrap(),
            VerificationKey::public_pem(Some("es".into()), Algorithm::ES256, EC_PUB).unwrap(),
            VerificationKey::public_pem(None, Algorithm::EdDSA, ED_PUB).unwrap(),
        ])
        .unwrap()
}

fn verified(auth: &Authenticator, token: &str) -> Claims {
    auth.verify(token).unwrap_or_else(|e| panic!("refused: {e}"))
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    let auth = node();
    let c = claims();
    let hs256 = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        &c,
    );
    let hs512 = sign(
        Algorithm::HS512,
        Some("hs512"),
        &EncodingKey::from_secret(HS512_SECRET),
        &c,
    );
    let rs256 = sign(Algorithm::RS256, Some("rs"), &rsa(), &c);
    let ps256 = sign(Algorithm::PS256, Some("ps"), &rsa(), &c);
    let es256 = sign(Algorithm::ES256, Some("es"), &ec(), &c);
    let eddsa = sign(Algorithm::EdDSA, None, &ed(), &c);
    for token in [hs256, hs512, rs256, ps256, es256, eddsa] {
        assert_eq!(verified(&auth, &token).sub, "alice");
    }
}

#[test]
fn jwks_keys_verify_by_kid_and_need_kid_and_alg() {
    let set = JwkSet {
        keys: [
            ("jwks-rs", Algorithm::RS256, rsa()),
            ("jwks-es", Algorithm::ES256, ec()),
            ("jwks-ed", Algorithm::EdDSA, ed()),
        ]
        .into_iter()
        .map(|(kid, alg, key)| {
            let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
            jwk.common.key_id = Some(kid.into());
            jwk
        })
        .collect(),
    };
    let keys = VerificationKey::jwks(&serde_json::to_string(&set).unwrap()).unwrap();
    let auth = Authenticator::new(JWT_SECRET, BTreeMap::new())
        .with_keys(keys)
        .unwrap();
    let c = claims();
    for (alg, kid, key) in [
        (Algorithm::RS256, "jwks-rs", rsa()),
        (Algorithm::ES256, "jwks-es", ec()),
        (Algorithm::EdDSA, "jwks-ed", ed()),
    ] {
        verified(&auth, &sign(alg, Some(kid), &key, &c));
    }
    // A JWKS key without kid, or without alg, is refused at load.
    let mut no_kid = Jwk::from_encoding_key(&ec(), Algorithm::ES256).unwrap();
    no_kid.common.key_id = None;
    let text = serde_json::to_string(&JwkSet { keys: vec![no_kid] }).unwrap();
    assert!(
        VerificationKey::jwks(&text)
            .unwrap_err()
            .to_string()
            .contains("kid")
    );
    let mut no_alg = Jwk::from_encoding_key(&ec(), Algorithm::ES256).unwrap();
    no_alg.common.key_id = Some("x".into());
    no_alg.common.key_algorithm = None;
    let text = serde_json::to_string(&JwkSet { keys: vec![no_alg] }).unwrap();
    assert!(
        VerificationKey::jwks(&text)
            .unwrap_err()
            .to_string()
            .contains("alg")
    );
}

#[test]
fn alg_none_is_refused() {
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "none", "kid": "rs"}),
    ] {
        let token = format!("{}.{}.", b64(header), b64(claims()));
        assert!(matches!(node().verify(&token), Err(AuthError::Invalid(_))));
    }
}

#[test]
fn hmac_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: the public key's PEM text used as an HMAC secret.
    let forged_key = EncodingKey::from_secret(RSA_PUB);
    let c = claims();
    let with_kid = sign(Algorithm::HS256, Some("rs"), &forged_key, &c);
    assert!(matches!(
        node().verify(&with_kid),
        Err(AuthError::AlgorithmNotAccepted { kid: Some(_), .. })
    ));
    // Without a kid it can only meet the jwt_secret, whose signature it does not carry.
    let without_kid = sign(Algorithm::HS256, None, &forged_key, &c);
    assert!(matches!(node().verify(&without_kid), Err(AuthError::Invalid(_))));
    // And the RSA key is never accepted as an HMAC key at configuration either.
    assert!(VerificationKey::public_pem(None, Algorithm::HS256, RSA_PUB).is_err());
}

#[test]
fn an_unknown_kid_and_another_keys_signature_are_refused() {
    let c = claims();
    let unknown = sign(Algorithm::RS256, Some("retired"), &rsa(), &c);
    assert!(matches!(node().verify(&unknown), Err(AuthError::UnknownKey { kid }) if kid == "retired"));
    // Signed with the EC key but naming the RSA key's id with the EC algorithm.
    let wrong_alg = sign(Algorithm::ES256, Some("rs"), &ec(), &c);
    assert!(matches!(
        node().verify(&wrong_alg),
        Err(AuthError::AlgorithmNotAccepted { .. })
    ));
    // An algorithm no key has, without a kid.
    let no_key = sign(
        Algorithm::HS384,
        None,
        &EncodingKey::from_secret(HS512_SECRET),
        &c,
    );
    assert!(matches!(
        node().verify(&no_key),
        Err(AuthError::AlgorithmNotAccepted { kid: None, .. })
    ));
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let mut c = claims();
    c["exp"] = json!(now() - 60);
    assert_eq!(
        node().verify(&sign(Algorithm::RS256, Some("rs"), &rsa(), &c)),
        Err(AuthError::Expired)
    );
    let mut c = claims();
    c["nbf"] = json!(now() + 120);
    assert_eq!(
        node().verify(&sign(Algorithm::EdDSA, None, &ed(), &c)),
        Err(AuthError::NotYetValid)
    );
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let auth = node()
        .with_issuer(Some("https://login.example".into()))
        .with_audience(Some("chorus".into()));
    let mut good = claims();
    good["iss"] = json!("https://login.example");
    good["aud"] = json!(["billing", "chorus"]);
    verified(&auth, &sign(Algorithm::ES256, Some("es"), &ec(), &good));

    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    assert_eq!(
        auth.verify(&sign(Algorithm::ES256, Some("es"), &ec(), &wrong_iss)),
        Err(AuthError::WrongIssuer)
    );
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("billing");
    assert_eq!(
        auth.verify(&sign(Algorithm::ES256, Some("es"), &ec(), &wrong_aud)),
        Err(AuthError::WrongAudience)
    );
    // Required once configured: a token without them is refused.
    let bare = sign(Algorithm::ES256, Some("es"), &ec(), &claims());
    assert!(auth.verify(&bare).is_err());
    // Unconfigured, a token's own aud is not held against it.
    verified(&node(), &sign(Algorithm::ES256, Some("es"), &ec(), &wrong_aud));
}

#[test]
fn tampered_claims_are_refused() {
    let token = sign(Algorithm::RS256, Some("rs"), &rsa(), &claims());
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: serde_json::Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["admin"]);
    let tampered = format!("{}.{}.{}", parts[0], engine.encode(payload.to_string()), parts[2]);
    assert!(matches!(node().verify(&tampered), Err(AuthError::Invalid(_))));
}

#[test]
fn during_a_rotation_tokens_of_both_keys_verify_and_after_it_only_the_new() {
    let old_key = VerificationKey::public_pem(Some("2026-10".into()), Algorithm::ES256, EC_PUB).unwrap();
    let new_key = VerificationKey::public_pem(Some("2026-11".into()), Algorithm::EdDSA, ED_PUB).unwrap();
    let c = claims();
    let old_token = sign(Algorithm::ES256, Some("2026-10"), &ec(), &c);
    let new_token = sign(Algorithm::EdDSA, Some("2026-11"), &ed(), &c);

    let during = Authenticator::new(JWT_SECRET, BTreeMap::new())
        .with_keys(vec![old_key.clone(), new_key.clone()])
        .unwrap();
    verified(&during, &old_token);
    verified(&during, &new_token);

    let after = Authenticator::new(JWT_SECRET, BTreeMap::new())
        .with_keys(vec![new_key])
        .unwrap();
    verified(&after, &new_token);
    assert!(matches!(
        after.verify(&old_token),
        Err(AuthError::UnknownKey { .. })
    ));
}

#[test]
fn misconfigured_keys_are_refused_with_what_is_wrong() {
    let short = VerificationKey::secret(None, Algorithm::HS384, b"too-short").unwrap_err();
    assert!(short.to_string().contains("at least 48 bytes"), "{short}");
    let wrong_family = VerificationKey::public_pem(None, Algorithm::ES256, RSA_PUB).unwrap_err();
    assert!(wrong_family.to_string().contains("ES256"), "{wrong_family}");
    let duplicate = Authenticator::new(JWT_SECRET, BTreeMap::new()).with_keys(vec![
        VerificationKey::public_pem(Some("k".into()), Algorithm::ES256, EC_PUB).unwrap(),
        VerificationKey::public_pem(Some("k".into()), Algorithm::EdDSA, ED_PUB).unwrap(),
    ]);
    assert!(duplicate.is_err());
    assert!(chorus_access::parse_algorithm("none").is_err());
}
