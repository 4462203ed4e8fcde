//! Mutual TLS between nodes, at the transport seam (`crate::transport`): a TLS
//! [`Connector`](crate::transport::Connector) for outgoing connections and TLS-accepted
//! incoming ones for the gRPC server. Everything above (gRPC, links, Raft) is unchanged.
//!
//! Each node presents a certificate issued by the cluster's own CA (`chorus certs init`) and
//! accepts only peers presenting one: a process without such a certificate cannot open a
//! connection, whatever headers it replays, and nothing between nodes travels in clear.
//!
//! The cluster secret stays a second factor, proven by both ends of every connection and bound
//! to its TLS session: right after the handshake the connecting node sends HMAC-SHA256(secret,
//! "client" and keying material exported from this TLS session, RFC 5705/8446); the accepting
//! node checks it before a byte of gRPC is read, and answers with its own (over "server"),
//! which the connecting node checks before it sends anything else. A proof is worth nothing
//! on any other connection, so there is nothing to capture and replay: a stolen certificate
//! without the secret, or the secret without a certificate, neither opens a connection nor
//! receives one. No static proof travels in the calls.
//!
//! A peer's certificate is checked against the CA, not against the address it was reached
//! at: every certificate the cluster CA issued is a node of this cluster, and operators need
//! not list each node's IP addresses in its certificate.

use crate::transport::{Connecting, Connector, PeerStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

/// How long a peer may take to complete its TLS handshake and prove the secret.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The label of the keying material a connection's secret proof is computed over.
const PROOF_LABEL: &[u8] = b"EXPORTER-chorus-cluster-secret-v1";

/// Which end of a connection a proof is from (each end proves the secret; the two proofs
/// differ, so one cannot be reflected back as the other).
#[derive(Clone, Copy)]
enum End {
    Connecting,
    Accepting,
}

/// The proof one end of a connection gives: HMAC-SHA256 of its end and the session's keying
/// material, keyed with the cluster secret.
fn session_proof(secret: &[u8], end: End, keying_material: &[u8; 32]) -> [u8; 32] {
    use hmac::{Mac, SimpleHmac};
    let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(match end {
        End::Connecting => b"client",
        End::Accepting => b"server",
    });
    mac.update(keying_material);
    mac.finalize().into_bytes().into()
}

fn exporter_error(e: rustls::Error) -> io::Error {
    io::Error::other(format!("exporting TLS keying material: {e}"))
}

/// Why the node-to-node TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the certificates or key.
    #[error("{0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("the cluster CA cannot verify peers: {0}")]
    Verifier(String),
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// This node's side of mutual TLS: what it presents and whom it trusts.
#[derive(Clone)]
pub struct PeerTls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    /// The cluster secret, which every connection proves (see the module's documentation).
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    /// Loads the cluster CA certificate, this node's certificate (chain) and its key; every
    /// connection also proves `cluster_secret`.
    pub fn load(ca: &Path, cert: &Path, key: &Path, cluster_secret: &str) -> Result<Self, PeerTlsError> {
        let pem_error = |path: &Path, what: String| PeerTlsError::Pem {
            path: path.to_path_buf(),
            what,
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| PeerTlsError::Io {
                action: "reading",
                path: path.to_path_buf(),
                source,
            })
        };
        let certs_of = |path: &Path| -> Result<Vec<CertificateDer<'static>>, PeerTlsError> {
            let certs = CertificateDer::pem_slice_iter(&read(path)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(path, format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(pem_error(path, "holds no certificate".into()));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for ca_cert in certs_of(ca)? {
            roots
                .add(ca_cert)
                .map_err(|e| pem_error(ca, format!("not a CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let chain = certs_of(cert)?;
        let private_key = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|e| pem_error(key, format!("not a PEM private key: {e}")))?;

        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| PeerTlsError::Verifier(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), private_key.clone_key())?;
        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| PeerTlsError::Verifier(e.to_string()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IssuedByTheClusterCa(server_verifier)))
            .with_client_auth_cert(chain, private_key)?;
        Ok(PeerTls {
            client: Arc::new(client),
            server: Arc::new(server),
            secret: Arc::from(cluster_secret.as_bytes()),
        })
    }

    /// A connector that opens streams with `inner` and speaks TLS over them.
    pub fn connector(&self, inner: Arc<dyn Connector>) -> Arc<dyn Connector> {
        Arc::new(TlsConnector {
            inner,
            tls: tokio_rustls::TlsConnector::from(self.client.clone()),
            secret: self.secret.clone(),
        })
    }

    /// The connections accepted on `listener` whose TLS handshake succeeded (with a
    /// certificate of the cluster CA) and that proved the cluster secret for their session,
    /// for the gRPC server. Failed handshakes are dropped (and logged at debug), wrong
    /// proofs too (logged as warnings): they never reach gRPC.
    pub fn incoming(&self, listener: TcpListener) -> ReceiverStream<io::Result<TlsPeer>> {
        let (accepted, stream) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let secret = self.secret.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a peer connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let local = tcp.local_addr().ok();
                let (acceptor, sender, secret) = (acceptor.clone(), accepted.clone(), secret.clone());
                tokio::spawn(async move {
                    let verified = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut stream = acceptor.accept(tcp).await?;
                        let material = stream
                            .get_ref()
                            .1
                            .export_keying_material([0u8; 32], PROOF_LABEL, None)
                            .map_err(exporter_error)?;
                        let mut presented = [0u8; 32];
                        stream.read_exact(&mut presented).await?;
                        let expected = session_proof(&secret, End::Connecting, &material);
                        if !crate::auth::constant_time_eq(&presented, &expected) {
                            return Err(io::Error::new(
                                io::ErrorKind::PermissionDenied,
                                "wrong cluster secret",
                            ));
                        }
                        stream
                            .write_all(&session_proof(&secret, End::Accepting, &material))
                            .await?;
                        stream.flush().await?;
                        Ok(stream)
                    };
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, verified).await {
                        Ok(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                            tracing::warn!(%remote, "peer with a certificate of the cluster CA but a wrong cluster secret refused");
                        }
                        Ok(Ok(stream)) => {
                            let _ = sender
                                .send(Ok(TlsPeer {
                                    stream,
                                    remote,
                                    local,
                                }))
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "peer TLS handshake refused"),
                        Err(_) => tracing::debug!(%remote, "peer TLS handshake timed out"),
                    }
                });
                if accepted.is_closed() {
                    return;
                }
            }
        });
        ReceiverStream::new(stream)
    }
}

struct TlsConnector {
    inner: Arc<dyn Connector>,
    tls: tokio_rustls::TlsConnector,
    secret: Arc<[u8]>,
}

impl Connector for TlsConnector {
    fn connect(&self, addr: &str) -> Connecting {
        let (stream, tls, addr) = (self.inner.connect(addr), self.tls.clone(), addr.to_string());
        let secret = self.secret.clone();
        Box::pin(async move {
            let stream = stream.await?;
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
            let proven = async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = tls.connect(name, stream).await?;
                let material = stream
                    .get_ref()
                    .1
                    .export_keying_material([0u8; 32], PROOF_LABEL, None)
                    .map_err(exporter_error)?;
                stream
                    .write_all(&session_proof(&secret, End::Connecting, &material))
                    .await?;
                stream.flush().await?;
                // Nothing is sent to a node that has not proven the secret in turn.
                let mut answered = [0u8; 32];
                stream.read_exact(&mut answered).await?;
                let expected = session_proof(&secret, End::Accepting, &material);
                if !crate::auth::constant_time_eq(&answered, &expected) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{addr} has a certificate of the cluster CA but not the cluster secret"),
                    ));
                }
                io::Result::Ok(stream)
            };
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, proven)
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, format!("TLS handshake with {addr}"))
                })??;
            Ok(Box::new(stream) as Box<dyn PeerStream>)
        })
    }
}

/// An accepted, TLS-authenticated peer connection.
pub struct TlsPeer {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    remote: SocketAddr,
    local: Option<SocketAddr>,
}

impl tonic::transport::server::Connected for TlsPeer {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}

impl tokio::io::AsyncRead for TlsPeer {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsPeer {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts a server certificate issued by the cluster CA whatever name it was reached by
/// (see the module docs); everything else (chain, validity, signatures) as WebPKI checks it.
#[derive(Debug)]
struct IssuedByTheClusterCa(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for IssuedByTheClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What `chorus certs init` wrote.
#[derive(Debug)]
pub struct GeneratedCerts {
    /// The CA certificate every node trusts.
    pub ca_cert: PathBuf,
    /// The CA key (keep it offline: it issues node certificates).
    pub ca_key: PathBuf,
    /// Per node id: its certificate and key.
    pub nodes: Vec<(u64, PathBuf, PathBuf)>,
}

/// Creates a cluster CA in `dir` and a certificate for each of `node_ids`, valid for
/// `hosts` too (for tools that check names). Keys are written readable by their owner only.
pub fn generate(dir: &Path, node_ids: &[u64], hosts: &[String]) -> Result<GeneratedCerts, PeerTlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).map_err(|source| PeerTlsError::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let write = |name: &str, contents: &str, mode: u32| -> Result<PathBuf, PeerTlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        let io = |source| PeerTlsError::Io {
            action: "writing",
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io)?;
        file.write_all(contents.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(path)
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Chorus cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let ca_key_path = write("ca.key", &ca_key_pem, 0o600)?;
    let ca_cert = write("ca.pem", &ca.pem(), 0o644)?;
    let mut nodes = Vec::new();
    for id in node_ids {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Chorus node {id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let key_path = write(&format!("node-{id}.key"), &key.serialize_pem(), 0o600)?;
        let cert_path = write(&format!("node-{id}.pem"), &cert.pem(), 0o644)?;
        nodes.push((*id, cert_path, key_path));
    }
    Ok(GeneratedCerts {
        ca_cert,
        ca_key: ca_key_path,
        nodes,
    })
}
