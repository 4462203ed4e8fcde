//! How the SDK trusts nodes: CA / self-signed certificates as roots, or pinned SHA-256
//! fingerprints of the nodes' certificates (what `chorus node` prints when it generates one).

use crate::Error;
use quinn::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use quinn::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use quinn::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use quinn::rustls::{self, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What the client trusts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust {
    pub(crate) roots: Vec<CertificateDer<'static>>,
    pub(crate) fingerprints: Vec<[u8; 32]>,
}

/// Parses a hex SHA-256 fingerprint; colons are allowed (`ab:cd:...`).
pub(crate) fn parse_fingerprint(text: &str) -> Result<[u8; 32], Error> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || Error::Config(format!("fingerprint {text:?} is not 64 hex digits (SHA-256)"));
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[derive(Debug)]
struct PinnedVerifier {
    fingerprints: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.fingerprints.contains(&digest) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls configuration for QUIC: TLS 1.3, ALPN `chorus/1`, the given trust.
pub(crate) fn client_crypto(trust: &Trust) -> Result<rustls::ClientConfig, Error> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut config = if trust.fingerprints.is_empty() {
        if trust.roots.is_empty() {
            return Err(Error::Config(
                "trust nothing: add a certificate (trust_certificate_pem) or a fingerprint (trust_fingerprint)".into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in &trust.roots {
            roots
                .add(cert.clone())
                .map_err(|e| Error::Config(format!("unusable certificate: {e}")))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        // Pinning: a node is trusted when its certificate is one of these (roots, if any,
        // are not consulted).
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                fingerprints: trust.fingerprints.clone(),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![crate::ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fingerprints_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
