//! The Backroom store node: inference on the store's cameras, local fine-tuning for federated
//! rounds, verified model updates, and shelf metrics queued locally and synced to the coordinator.
//!
//! Entry points: [`run`] and [`run_with_status`]. They set up the node (bundle, local database,
//! data key, installed model, compute backend, redactor, local samples), say `Hello`, and run
//! five loops until the shutdown future resolves:
//! - [`updater`]: long poll; installs newer signed versions, runs training tasks ([`trainer`]) and
//!   delivers approved frame requests ([`frame_export`]);
//! - heartbeat ([`session`]);
//! - [`camera`]: [`frames`] from the camera's source → [`redact`] → inference → the encrypted
//!   [`local_store`] and per-window counts → a noised [`release`] charged to the privacy
//!   [`ledger`] → the local queue;
//! - retention ([`local_store::run_retention`]): deletes what is older than the window;
//! - [`metrics_sync`]: the queue → the coordinator, with idempotency keys.

pub mod camera;
pub mod config;
pub mod dp;
pub mod frame_export;
pub mod frames;
pub mod ledger;
pub mod local_store;
pub mod metrics_sync;
pub mod model_store;
pub mod model_stream;
pub mod redact;
pub mod release;
mod session;
pub mod telemetry;
pub mod trainer;
pub mod transport;
pub mod updater;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use backroom_datasets::ShelfCrops;
use backroom_models::ComputeDevice;
use backroom_proto::v1::node_service_client::NodeServiceClient;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tracing::{error, info, warn};

pub use config::{CameraSettings, ConfigError, DataSettings, MetricPrivacySettings, NodeConfig};
pub use ledger::DayBudget;

use crate::local_store::{LocalStore, Vault};
use crate::metrics_sync::MetricQueue;
use crate::model_store::{InstalledModel, ModelStore};
use crate::redact::Redactor;
use crate::transport::Shutdown;

/// How long the loops get to finish after shutdown before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What the node is doing, for the pilot's progress output and for tests.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub backend: String,
    pub installed_version: u64,
    pub rounds_trained: u32,
    pub last_round_id: String,
    pub last_train_loss: Option<f32>,
    /// Frames the camera's source handed to the pipeline.
    pub frames_captured: u64,
    /// Frames dropped unprocessed because the pipeline was behind (load shedding).
    pub frames_dropped: u64,
    /// Frames that could not be read or decoded.
    pub frames_unreadable: u64,
    /// Faces filled by redaction.
    pub faces_redacted: u64,
    /// Moving regions (people from any angle) filled by the camera's moving-region mask.
    pub moving_regions_filled: u64,
    /// Frames filled whole by the moving-region mask (a camera learning its background, or a
    /// change over all of its picture).
    pub frames_fully_masked: u64,
    /// Frames redacted, inferred and counted.
    pub frames_processed: u64,
    /// Frame events written to the encrypted local store, and images among them.
    pub frames_stored: u64,
    pub images_stored: u64,
    /// Frames that could not be stored locally (a full disk, say); they were still counted.
    pub store_errors: u64,
    /// Windows closed (released, refused, or replayed after a restart and already recorded).
    pub windows_closed: u64,
    /// Windows released (noised, charged, queued) by this run.
    pub metric_releases: u64,
    /// Windows refused by this run because their day's privacy budget was spent.
    pub releases_refused: u64,
    /// The metric privacy budget of the UTC day of the last window released or refused: ρ spent,
    /// remaining and the day's budget.
    pub metric_budget: Option<DayBudget>,
    /// Releases acknowledged by the coordinator in this run.
    pub windows_synced: u64,
    pub refused_models: u32,
    pub last_error: Option<String>,
}

/// Runs a store node until `shutdown` resolves; returns `Ok(())` after a graceful stop.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (status, _) = watch::channel(NodeStatus::default());
    run_with_status(config, shutdown, status).await
}

/// [`run`], publishing the node's [`NodeStatus`] on `status` as it changes.
pub async fn run_with_status(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    status: watch::Sender<NodeStatus>,
) -> anyhow::Result<()> {
    run_with_model(config, shutdown, status, watch::Sender::new(None)).await
}

/// The live model as inference sees it: replaced whole, never changed in place.
pub type LiveModel = watch::Receiver<Option<Arc<InstalledModel>>>;

/// [`run_with_status`], also publishing the live model on `model` (subscribe for a
/// [`LiveModel`]); every swap is a whole, verified version.
pub async fn run_with_model(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    status: watch::Sender<NodeStatus>,
    model: watch::Sender<Option<Arc<InstalledModel>>>,
) -> anyhow::Result<()> {
    config.validate().context("invalid node configuration")?;
    let (stop, stop_receiver) = watch::channel(false);
    let forward = stop.clone();
    let forwarder = tokio::spawn(async move {
        shutdown.await;
        let _ = forward.send(true);
    });
    let telemetry = match config.telemetry_listen {
        Some(addr) => {
            let listener = telemetry::bind(addr).await?;
            let (status, stop) = (status.subscribe(), stop_receiver.clone());
            Some(tokio::spawn(async move {
                if let Err(error) = telemetry::serve(listener, status, stop).await {
                    warn!("telemetry stopped: {error:#}");
                }
            }))
        }
        None => None,
    };
    let result = run_node(config, Shutdown::new(stop_receiver), stop, status, model).await;
    forwarder.abort();
    if let Some(telemetry) = telemetry {
        telemetry.abort();
    }
    if let Err(error) = &result {
        error!("store node stopped with an error: {error:#}");
    }
    result
}

/// Shared by the node's loops. Locks (the `watch` channels) are held only for a read or a write,
/// never across an `.await`.
pub(crate) struct NodeContext {
    pub(crate) config: NodeConfig,
    pub(crate) client: NodeServiceClient<Channel>,
    pub(crate) status: watch::Sender<NodeStatus>,
    /// The live model; replaced whole by the updater.
    pub(crate) model: watch::Sender<Option<Arc<InstalledModel>>>,
    pub(crate) model_store: ModelStore,
    pub(crate) device: Arc<ComputeDevice>,
    pub(crate) backend: String,
    pub(crate) queue: MetricQueue,
    pub(crate) local_store: LocalStore,
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) train_data: Arc<ShelfCrops>,
    /// Known once the coordinator answered `Hello` (or from the last run).
    pub(crate) node_id: watch::Sender<Option<String>>,
    /// Signalled when a new window is queued.
    pub(crate) windows_ready: Notify,
}

impl NodeContext {
    pub(crate) fn installed_model(&self) -> Option<Arc<InstalledModel>> {
        self.model.borrow().clone()
    }

    pub(crate) fn installed_version(&self) -> u64 {
        self.model.borrow().as_ref().map_or(0, |m| m.version())
    }

    pub(crate) fn node_id(&self) -> String {
        self.node_id.borrow().clone().unwrap_or_default()
    }

    pub(crate) fn update_status(&self, change: impl FnOnce(&mut NodeStatus)) {
        self.status.send_modify(change);
    }

    pub(crate) fn set_error(&self, message: String) {
        self.status.send_modify(|s| s.last_error = Some(message));
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One line for a failed RPC: the coordinator's message, the code, and the transport cause.
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    let mut line = format!("{} (code {:?})", status.message(), status.code());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        // Transport errors repeat their text down the chain; keep each piece once.
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

async fn run_node(
    config: NodeConfig,
    mut shutdown: Shutdown,
    stop: watch::Sender<bool>,
    status: watch::Sender<NodeStatus>,
    model: watch::Sender<Option<Arc<InstalledModel>>>,
) -> anyhow::Result<()> {
    let bundle =
        transport::load_bundle(&config.bundle_dir).context("cannot load the enrolment bundle")?;
    let queue = MetricQueue::open(&config.data_dir).await.with_context(|| {
        format!(
            "cannot open the local database in {}",
            config.data_dir.display()
        )
    })?;
    let key_file = config.key_file();
    let vault = tokio::task::spawn_blocking(move || Vault::open_or_create(&key_file))
        .await
        .context("key file task failed")?
        .with_context(|| {
            format!(
                "cannot open the local store's key file {}",
                config.key_file().display()
            )
        })?;
    let local_store = LocalStore::new(queue.pool.clone(), &config.data_dir, Arc::new(vault));
    let redactor = tokio::task::spawn_blocking(Redactor::new)
        .await
        .context("redactor task failed")?
        .context("cannot load the face detectors")?;
    let model_store = ModelStore::new(
        config.data_dir.join("model"),
        bundle.model_root_key,
        config.lineage.clone(),
        config.max_model_bytes,
    );
    let installed = load_installed_model(&model_store).await;

    let choice = config.backend;
    let device = tokio::task::spawn_blocking(move || backroom_models::select_device(choice))
        .await
        .context("backend selection task failed")?
        .context("cannot select a compute backend")?;
    let backend = device.description().to_owned();
    match device.fallback_reason() {
        Some(reason) => info!(
            backend = %backend,
            requested = %choice,
            "compute backend selected (wgpu not used: {reason})"
        ),
        None => info!(backend = %backend, requested = %choice, "compute backend selected"),
    }

    let data = config.data.clone();
    let train_data = tokio::task::spawn_blocking(move || {
        backroom_datasets::generate_store_split(
            data.world_seed,
            data.store_index,
            data.train_samples,
        )
    })
    .await
    .context("sample generation task failed")?;
    info!(
        samples = train_data.labels.len(),
        "local labelled samples ready"
    );

    let channel =
        transport::connect(&config, &bundle).context("cannot set up the coordinator channel")?;
    let stored_node_id = queue
        .stored_node_id()
        .await
        .context("cannot read the stored node id")?;
    let last_budget = queue
        .ledger()
        .await
        .context("cannot read the privacy ledger")?
        .pop();
    if let Some(day) = &last_budget {
        info!(
            day = %day.date,
            rho_spent = day.rho_spent,
            rho_remaining = day.rho_remaining,
            "metric privacy budget of the last recorded day"
        );
    }
    status.send_modify(|s| {
        s.metric_budget = last_budget.clone();
        s.backend = backend.clone();
        s.installed_version = installed.as_ref().map_or(0, |m| m.version());
        s.node_id = stored_node_id.clone().unwrap_or_default();
    });
    let ctx = Arc::new(NodeContext {
        config,
        client: transport::node_client(channel),
        status,
        model: {
            model.send_replace(installed);
            model
        },
        model_store,
        device: Arc::new(device),
        backend,
        queue,
        local_store,
        redactor: Arc::new(redactor),
        train_data: Arc::new(train_data),
        node_id: watch::Sender::new(stored_node_id),
        windows_ready: Notify::new(),
    });

    let mut tasks = JoinSet::new();
    // The camera needs only a node id, which a previous run may have stored: it keeps counting
    // while the coordinator is away.
    tasks.spawn(camera::run_camera(ctx.clone(), shutdown.clone()));
    tasks.spawn(local_store::run_retention(ctx.clone(), shutdown.clone()));
    if let Some(hello) = session::hello_until_answered(&ctx, &mut shutdown).await {
        let interval = hello.heartbeat_interval_secs;
        tasks.spawn(session::run_heartbeat(
            ctx.clone(),
            interval,
            shutdown.clone(),
        ));
        tasks.spawn(updater::run_updater(ctx.clone(), shutdown.clone()));
        tasks.spawn(metrics_sync::run_metric_sync(ctx.clone(), shutdown.clone()));
    }

    let mut failure = None;
    while failure.is_none() {
        tokio::select! {
            _ = shutdown.triggered() => break,
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => failure = Some(error),
                Some(Err(join)) => failure = Some(anyhow!("a node task failed: {join}")),
            },
        }
    }
    let _ = stop.send(true);
    info!("store node stopping");
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    warn!("a node task ended with an error while stopping: {error:#}")
                }
                Err(join) => warn!("a node task failed while stopping: {join}"),
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!("node tasks did not stop within {STOP_GRACE:?}; aborting them");
        tasks.abort_all();
    }
    ctx.queue.close().await;
    info!("store node stopped");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The installed model, re-verified; on any failure the node starts with no model.
async fn load_installed_model(store: &ModelStore) -> Option<Arc<InstalledModel>> {
    let store = store.clone();
    let dir = store.dir().to_owned();
    let loaded = tokio::task::spawn_blocking(move || store.load_installed(now_unix_ms())).await;
    match loaded {
        Ok(Ok(Some(model))) => {
            info!(version = model.version(), dir = %dir.display(), "installed model verified");
            Some(Arc::new(model))
        }
        Ok(Ok(None)) => {
            info!(dir = %dir.display(), "no model installed yet");
            None
        }
        Ok(Err(error)) => {
            error!("{error}; starting with no model");
            None
        }
        Err(join) => {
            error!("model verification task failed: {join}; starting with no model");
            None
        }
    }
}
