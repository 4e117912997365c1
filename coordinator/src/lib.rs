//! The Backroom coordinator: mutually authenticated gRPC services for store nodes and admins,
//! the round state machine, DP-FedAvg aggregation, and the signed model registry.
//!
//! Entry points: [`Coordinator::start`] then [`Coordinator::serve`], or [`run`].

pub mod admin_service;
pub mod aggregate;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod budget;
pub mod config;
pub mod core;
pub mod driver;
pub mod error;
pub mod frame_requests;
pub mod group_commit;
pub mod http_api;
pub mod identity;
pub mod ledger;
pub mod metrics;
pub mod node_service;
pub mod poll_view;
pub mod presence;
pub mod privacy;
pub mod privacy_service;
pub mod registry;
pub mod rollout;
pub mod round;
pub mod signing_keys;
pub mod store;
#[cfg(test)]
mod store_conformance;
pub mod store_tokens;
pub mod strategy;
pub mod telemetry;
pub mod tls;
pub mod upload;
pub mod wire_tap;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use backroom_proto::MAX_CHUNK_BYTES;
use backroom_proto::v1::admin_service_server::AdminServiceServer;
use backroom_proto::v1::node_service_server::NodeServiceServer;
use backroom_proto::v1::privacy_service_server::PrivacyServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

pub use crate::config::CoordinatorConfig;
use crate::core::{Core, Settings};
use crate::identity::CertificateAuthority;
use crate::registry::Registry;
use crate::store::Store;

/// Largest gRPC message accepted: one chunk plus framing.
const MAX_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + 64 * 1024;

/// A coordinator that has opened its database, loaded its keys and bound its listener.
#[derive(Debug)]
pub struct Coordinator {
    core: Arc<Core>,
    listener: TcpListener,
    tls: rustls::ServerConfig,
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    wire_tap: Option<wire_tap::WireTap>,
    tokens: Arc<store_tokens::StoreTokens>,
}

impl Coordinator {
    /// Opens (or creates) the data directory, CA, signing key and database; publishes version 1
    /// of the lineage if none exists; resumes unfinished rounds; binds the listener.
    pub async fn start(config: CoordinatorConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let pki_dir = config.pki_dir();
        let server_names = config.server_names.clone();
        let ca = tokio::task::spawn_blocking(move || {
            CertificateAuthority::load_or_create(&pki_dir, &server_names)
        })
        .await
        .context("certificate task failed")?
        .context("cannot load or create the certificate authority")?;
        let paths = ca.paths().clone();
        signing_keys::load_current(&paths).context("cannot load the model-signing keys")?;
        let tokens = Arc::new(
            store_tokens::StoreTokens::load_or_create(&paths.dir)
                .context("cannot load or create the store-token key")?,
        );
        let tls = tls::server_config(&paths.ca_cert(), &paths.server_cert(), &paths.server_key())
            .context("cannot build the TLS configuration")?;

        let store = Store::open(&config.database_url).await.with_context(|| {
            format!(
                "cannot open database {}",
                store::redact_url(&config.database_url)
            )
        })?;
        let blobs = blobs::BlobStore::open(
            config.blob_store.as_deref(),
            &config.data_dir.join("blobs"),
            &config.blob_store_options,
        )
        .context("cannot open the blob store")?;
        tracing::info!(location = blobs.location(), "blob store");
        let registry = Registry::new(
            store.clone(),
            blobs,
            config.data_dir.join("models"),
            paths.clone(),
            config.model_expiry_secs,
            config.model.clone(),
        );
        let first_publication = store.latest_version(&config.lineage).await?.is_none();
        let initial = registry
            .ensure_initial(&config.lineage, config.init_seed)
            .await
            .context("cannot publish the initial model version")?;

        store
            .set_budget(
                &config.lineage,
                &config.privacy_budget,
                registry::now_unix_ms(),
            )
            .await
            .context("cannot record the lineage's privacy budget")?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let settings = Settings {
            heartbeat_interval_secs: config.heartbeat_interval_secs,
            max_update_bytes: config.max_update_bytes,
            sampling_timeout: config.sampling_timeout,
            overselect: config.overselect,
            online_window: config.online_window,
            frame_request_sweep: config.frame_request_sweep,
            exports_dir: config.data_dir.join("frame-exports"),
            max_export_bytes: config.max_export_bytes,
            publish_rounds_to_stable: config.publish_rounds_to_stable,
            replica_id: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            round_lease: config.round_lease,
            data_dir: config.data_dir.clone(),
            store_groups: config.store_groups.clone(),
        };
        let core = Arc::new(Core::new(store, registry, settings, shutdown_rx));
        core.audit_log
            .check_head()
            .await
            .context("cannot check the audit log's head")?;
        if first_publication {
            audit::record_initial_version(&core, &initial).await;
        }

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr().context("listener has no address")?;

        for round in core.store.unfinished_rounds().await? {
            tracing::info!(round_id = %round.round_id, state = round.state.as_str(), "resuming round");
            driver::spawn(Arc::clone(&core), round.round_id);
        }
        Ok(Self {
            core,
            listener,
            tls,
            local_addr,
            shutdown_tx,
            wire_tap: None,
            tokens,
        })
    }

    /// Records the decrypted bytes of every client connection from now on (privacy audits and
    /// tests; see [`wire_tap`]). Call before [`Coordinator::serve`].
    pub fn tap_connections(&mut self) -> wire_tap::WireTap {
        self.wire_tap.get_or_insert_with(Default::default).clone()
    }

    /// Records into an existing tap (e.g. one kept across a restart).
    pub fn set_wire_tap(&mut self, tap: wire_tap::WireTap) {
        self.wire_tap = Some(tap);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops long polls and drains connections.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            core,
            listener,
            tls,
            local_addr,
            shutdown_tx,
            wire_tap,
            tokens,
        } = self;
        let incoming = tls::incoming(listener, tls, wire_tap);
        let node = NodeServiceServer::new(node_service::NodeApi::new(Arc::clone(&core)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let node = InterceptedService::new(node, auth::node_only);
        let admin = AdminServiceServer::new(admin_service::AdminApi::new(
            Arc::clone(&core),
            Arc::clone(&tokens),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let admin = InterceptedService::new(admin, auth::staff_only);
        let privacy =
            PrivacyServiceServer::new(privacy_service::PrivacyApi::new(Arc::clone(&core)));
        let privacy = InterceptedService::new(privacy, auth::privacy_officer_only);
        let sweeper = tokio::spawn(
            Arc::clone(&core).run_frame_request_sweeper(core.settings.frame_request_sweep),
        );
        let presence = tokio::spawn(Arc::clone(&core).run_presence_flusher());
        let feed = tokio::spawn(Arc::clone(&core).run_change_feed());
        let leases = tokio::spawn(driver::run_lease_sweeper(Arc::clone(&core)));
        tracing::info!(%local_addr, "coordinator listening (TLS 1.3, client certificates required)");
        let signal = async move {
            shutdown.await;
            tracing::info!("coordinator shutting down");
            let _ = shutdown_tx.send(true);
        };
        // gRPC services and the HTTP routes (JSON API, dashboard, Prometheus) on one listener.
        // The HTTP router first: its fallback (a JSON 404) answers unknown paths.
        let routes = tonic::service::Routes::from(http_api::router(Arc::clone(&core), tokens))
            .add_service(node)
            .add_service(admin)
            .add_service(privacy);
        tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .context("gRPC server failed")?;
        sweeper.abort();
        feed.abort();
        leases.abort();
        // Its last flush, after the shutdown signal.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), presence).await;
        core.audit_log.wait_idle().await;
        Ok(())
    }
}

/// Starts a coordinator and serves until `shutdown`.
pub async fn run(
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Coordinator::start(config).await?.serve(shutdown).await
}
