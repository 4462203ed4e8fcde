//! The QUIC listener's certificate: from configured PEM files, or a self-signed one generated
//! once into the data directory and reused on every start (so its fingerprint stays valid).

use quinn::rustls::pki_types::pem::PemObject;
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why the certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate could not be generated.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// A certificate chain and its key, ready for rustls.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Where the certificate lives.
    pub cert_path: PathBuf,
    /// Lowercase hex SHA-256 of the leaf certificate (DER).
    pub fingerprint: String,
    /// True when this start generated it.
    pub generated: bool,
}

/// The SHA-256 fingerprint (lowercase hex) of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

fn read_pem(cert_path: &Path, key_path: &Path, generated: bool) -> Result<TlsMaterial, TlsError> {
    let pem = |path: &Path, reason: String| TlsError::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem(cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert_path, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(pem(cert_path, "no CERTIFICATE block".into()));
    };
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem(key_path, e.to_string()))?;
    Ok(TlsMaterial {
        fingerprint: fingerprint(leaf),
        chain,
        key,
        cert_path: cert_path.to_path_buf(),
        generated,
    })
}

/// Loads `cert` and `key` when both are given; otherwise uses (or first generates)
/// `data_dir/tls/cert.pem` and `key.pem` for `names` (DNS names or IP addresses).
pub fn load_or_generate(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    names: Vec<String>,
) -> Result<TlsMaterial, TlsError> {
    if let (Some(cert), Some(key)) = (cert, key) {
        return read_pem(cert, key, false);
    }
    let dir = data_dir.join("tls");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        // Written durably, key before certificate (see below): both are complete.
        return read_pem(&cert_path, &key_path, false);
    }
    let io = |action, path: &Path, source| TlsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    // The new directory's entry lives in the data directory.
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsyncing", data_dir, e))?;
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    // Key first, certificate last: the certificate's presence means both are complete (a
    // crash in between leaves no certificate, and the next start generates a new pair).
    write_durably(&key_path, generated.signing_key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| io("writing", &key_path, e))?;
    write_durably(&cert_path, generated.cert.pem().as_bytes(), 0o644)
        .map_err(|e| io("writing", &cert_path, e))?;
    read_pem(&cert_path, &key_path, true)
}

/// Writes `bytes` so that a power loss leaves either the whole file or none: a temp file,
/// fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = std::env::temp_dir().join(format!("chorus-tls-test-{}", std::process::id()));
        let first = load_or_generate(None, None, &dir, vec!["localhost".into()]).unwrap();
        assert!(first.generated);
        assert_eq!(first.fingerprint.len(), 64);
        let second = load_or_generate(None, None, &dir, vec!["localhost".into()]).unwrap();
        assert!(!second.generated);
        assert_eq!(first.fingerprint, second.fingerprint);
        let missing = load_or_generate(
            Some(&dir.join("nope.pem")),
            Some(&dir.join("nope.key")),
            &dir,
            vec![],
        );
        assert!(matches!(missing, Err(TlsError::Pem { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
