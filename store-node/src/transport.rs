//! The node's link to the coordinator: the enrolment bundle, a mutual-TLS tonic channel, and the
//! backoff used whenever the coordinator is away.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backroom_proto::MAX_CHUNK_BYTES;
use backroom_proto::v1::node_service_client::NodeServiceClient;
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use rand::Rng;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::NodeConfig;

/// File names inside the bundle directory.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
/// The model root's public key: the node's only model trust anchor. The signing keys it
/// trusts come from key sets this root signed.
pub const MODEL_ROOT_FILE: &str = "model-root.pub.pem";

/// Timeout of one unary RPC (the long poll adds its wait to this).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the bundle or the channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read bundle file {path}: {source}")]
    ReadBundleFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle file {path} does not hold {expected}")]
    MalformedBundleFile {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("bundle file {path} is not an Ed25519 public key in SPKI PEM: {reason}")]
    SigningKey { path: PathBuf, reason: String },
    #[error("coordinator_url {url:?} is not usable: {source}")]
    Endpoint {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// What `backroom enroll` gave this node.
#[derive(Clone)]
pub struct NodeBundle {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The root key every key set must be signed with.
    pub model_root_key: VerifyingKey,
}

impl std::fmt::Debug for NodeBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("NodeBundle")
            .field(
                "model_root_key",
                &hex::encode(self.model_root_key.as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

/// Reads the four bundle files, naming the file in every error.
pub fn load_bundle(dir: &Path) -> Result<NodeBundle, TransportError> {
    let ca_pem = read_pem(
        &dir.join(CA_FILE),
        "-----BEGIN CERTIFICATE-----",
        "a PEM certificate",
    )?;
    let cert_pem = read_pem(
        &dir.join(CERT_FILE),
        "-----BEGIN CERTIFICATE-----",
        "a PEM certificate",
    )?;
    let key_pem = read_pem(&dir.join(KEY_FILE), "PRIVATE KEY-----", "a PEM private key")?;
    let signing_path = dir.join(MODEL_ROOT_FILE);
    let signing_pem = read_pem(
        &signing_path,
        "-----BEGIN PUBLIC KEY-----",
        "a PEM public key",
    )?;
    let signing_text = String::from_utf8_lossy(&signing_pem);
    let model_root_key = VerifyingKey::from_public_key_pem(&signing_text).map_err(|e| {
        TransportError::SigningKey {
            path: signing_path.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(NodeBundle {
        ca_pem,
        cert_pem,
        key_pem,
        model_root_key,
    })
}

fn read_pem(path: &Path, marker: &str, expected: &'static str) -> Result<Vec<u8>, TransportError> {
    let bytes = std::fs::read(path).map_err(|source| TransportError::ReadBundleFile {
        path: path.to_owned(),
        source,
    })?;
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(TransportError::MalformedBundleFile {
            path: path.to_owned(),
            expected,
        });
    }
    Ok(bytes)
}

/// A lazily connecting mutual-TLS channel: it connects on the first RPC and reconnects by itself
/// after the coordinator goes away, so callers only retry their RPC with [`Backoff`].
pub fn connect(config: &NodeConfig, bundle: &NodeBundle) -> Result<Channel, TransportError> {
    let url = config.coordinator_url.clone();
    let endpoint_error = |source| TransportError::Endpoint {
        url: url.clone(),
        source,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&bundle.ca_pem))
        .identity(Identity::from_pem(&bundle.cert_pem, &bundle.key_pem))
        .domain_name(config.tls_server_name.clone());
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(endpoint_error)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .tls_config(tls)
        .map_err(endpoint_error)?;
    Ok(endpoint.connect_lazy())
}

/// The node-service client with message limits that fit the chunked protocol: a chunk is at most
/// [`MAX_CHUNK_BYTES`] plus framing, so anything larger is refused by the codec.
pub fn node_client(channel: Channel) -> NodeServiceClient<Channel> {
    let limit = MAX_CHUNK_BYTES + 128 * 1024;
    NodeServiceClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// A request with a deadline, so a silent coordinator cannot hang a loop.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Exponential backoff, capped, with jitter: attempt n waits a random time in
/// `[d/2, d]` where `d = min(max, base * 2^n)`.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The usual backoff for reaching the coordinator: 0.5 s up to 30 s.
    pub fn for_coordinator() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// Failures since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next try; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = backoff_ceiling(self.attempt, self.base, self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter: f64 = rand::rng().random_range(0.5..=1.0);
        ceiling.mul_f64(jitter)
    }
}

/// `min(max, base * 2^attempt)`, without overflow.
pub fn backoff_ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(31));
    base.saturating_mul(factor).min(max)
}

/// A cloneable view of the node's shutdown signal.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new(receiver: watch::Receiver<bool>) -> Self {
        Self(receiver)
    }

    /// Resolves once shutdown has been asked for (or the signal's owner is gone).
    pub async fn triggered(&mut self) {
        // An error means the sender was dropped, which also means: stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// Sleeps for `duration` unless shutdown comes first; returns `true` on shutdown.
pub async fn sleep_or_shutdown(duration: Duration, shutdown: &mut Shutdown) -> bool {
    tokio::select! {
        _ = shutdown.triggered() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}
