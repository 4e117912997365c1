//! The coordinator's only listener: TLS 1.3 with a required client certificate from our CA.
//!
//! Handshakes run in their own tasks so a slow or hostile client cannot stall the accept loop;
//! finished connections are handed to tonic as a stream.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::wire_tap::{TappableStream, WireTap};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read PEM from {path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS configuration is invalid: {0}")]
    Config(String),
}

/// Builds the server configuration: TLS 1.3 only, ring provider, client certificates required
/// and verified against `ca_cert`, HTTP/2 via ALPN.
pub fn server_config(
    ca_cert: &Path,
    server_cert: &Path,
    server_key: &Path,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| TlsSetupError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_cert).map_err(|e| pem_err(ca_cert, &e))? {
        let cert = cert.map_err(|e| pem_err(ca_cert, &e))?;
        roots
            .add(cert)
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    }
    let chain = CertificateDer::pem_file_iter(server_cert)
        .map_err(|e| pem_err(server_cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(server_cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(server_key).map_err(|e| pem_err(server_key, &e))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    // gRPC needs HTTP/2; the HTTP routes (API, dashboard, Prometheus) also take HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts TCP connections, completes TLS handshakes concurrently, and yields finished streams.
/// The background task ends when the returned stream is dropped.
/// With a `tap`, every connection's decrypted bytes are also recorded (see `wire_tap.rs`).
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
    tap: Option<WireTap>,
) -> ReceiverStream<Result<TappableStream, std::io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let tap = tap.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let stream = TappableStream::new(stream, tap.as_ref());
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => debug!(%remote, %error, "TLS handshake refused"),
                    Err(_) => debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
