//! An in-process Backroom: one coordinator and several store nodes talking over real mTLS on
//! loopback, each node with its own bundle, data directory and slice of shelf data. The pilot
//! and the end-to-end tests are both built on it.

use backroom_coordinator::config::DEFAULT_BUDGET;
use backroom_coordinator::ledger::Budget;
use backroom_coordinator::wire_tap::WireTap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use backroom_coordinator::identity::{BundlePaths, CertificateAuthority, Role};
use backroom_coordinator::{Coordinator, CoordinatorConfig};
use backroom_models::BackendChoice;
use backroom_proto::v1 as pb;
use backroom_store_node::NodeStatus;
use backroom_store_node::config::{
    CameraSettings, DataSettings, LocalStoreSettings, MetricPrivacySettings, NodeConfig,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{self, AdminClient};

/// How to build a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    pub data_dir: PathBuf,
    pub stores: usize,
    pub world_seed: u64,
    pub train_samples: usize,
    pub backend: BackendChoice,
    pub camera: CameraSettings,
    /// Differential privacy of the nodes' metric releases.
    pub metrics: MetricPrivacySettings,
    /// The nodes' encrypted local store and its retention.
    pub local_store: LocalStoreSettings,
    /// Longest wait of a node's long poll.
    pub poll_wait_secs: u32,
    /// The lineage's privacy budget (ε_max, δ) given to the coordinator.
    pub privacy_budget: Budget,
    /// Record the decrypted bytes of every connection to the coordinator ([`Sandbox::wire_tap`]).
    pub tap_connections: bool,
    /// Applied to the coordinator's configuration before it starts.
    pub coordinator: fn(&mut CoordinatorConfig),
    /// Give each node a Prometheus `telemetry_listen` on a free loopback port (its
    /// `SandboxNode::config` says which).
    pub node_telemetry: bool,
}

impl SandboxOptions {
    pub fn new(data_dir: impl Into<PathBuf>, stores: usize) -> Self {
        Self {
            data_dir: data_dir.into(),
            stores,
            world_seed: 2024,
            train_samples: 512,
            backend: BackendChoice::Cpu,
            camera: CameraSettings {
                frame_interval: Duration::from_millis(250),
                seconds_per_frame: 300,
                ..CameraSettings::default()
            },
            metrics: MetricPrivacySettings::default(),
            local_store: LocalStoreSettings::default(),
            poll_wait_secs: 5,
            privacy_budget: DEFAULT_BUDGET,
            tap_connections: false,
            coordinator: |_| {},
            node_telemetry: false,
        }
    }
}

/// A running store node.
#[derive(Debug)]
pub struct SandboxNode {
    pub store_id: String,
    pub status: watch::Receiver<NodeStatus>,
    /// The node's live model, as its inference sees it.
    pub model: backroom_store_node::LiveModel,
    pub config: NodeConfig,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A running coordinator and its nodes.
#[derive(Debug)]
pub struct Sandbox {
    pub options: SandboxOptions,
    pub coordinator_dir: PathBuf,
    pub coordinator_url: String,
    pub admin_bundle: PathBuf,
    pub admin: AdminClient,
    pub nodes: Vec<SandboxNode>,
    pub lineage: String,
    /// Everything clients sent the coordinator, when `tap_connections` was set (across restarts).
    pub wire_tap: Option<WireTap>,
    coordinator_config: CoordinatorConfig,
    coordinator_shutdown: watch::Sender<bool>,
    coordinator_task: JoinHandle<anyhow::Result<()>>,
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

impl Sandbox {
    /// Starts the coordinator, enrols an admin and `options.stores` nodes, and starts the nodes.
    pub async fn start(options: SandboxOptions) -> anyhow::Result<Self> {
        let coordinator_dir = options.data_dir.join("coordinator");
        let mut config = CoordinatorConfig::for_data_dir(&coordinator_dir);
        config.privacy_budget = options.privacy_budget;
        (options.coordinator)(&mut config);
        let lineage = config.lineage.clone();
        let mut coordinator = Coordinator::start(config.clone()).await?;
        let wire_tap = options
            .tap_connections
            .then(|| coordinator.tap_connections());
        // A restarted coordinator comes back at the same address.
        config.listen = coordinator.local_addr();
        let coordinator_config = config;
        let coordinator_url = format!("https://{}", coordinator.local_addr());
        let (coordinator_shutdown, rx) = watch::channel(false);
        let coordinator_task = tokio::spawn(coordinator.serve(wait_true(rx)));

        let admin_bundle = issue_bundle(
            &coordinator_dir,
            Role::Admin,
            "pilot-admin",
            &options.data_dir.join("bundles/pilot-admin"),
        )
        .await?;
        record_enrolment(
            &coordinator_config,
            Role::Admin,
            "pilot-admin",
            &admin_bundle,
        )
        .await?;
        let admin = client::admin(&coordinator_url, "localhost", &admin_bundle).await?;
        let mut sandbox = Self {
            options,
            coordinator_dir,
            coordinator_url,
            admin_bundle,
            admin,
            nodes: Vec::new(),
            lineage,
            wire_tap,
            coordinator_config,
            coordinator_shutdown,
            coordinator_task,
        };
        for index in 0..sandbox.options.stores {
            sandbox.add_node(index).await?;
        }
        Ok(sandbox)
    }

    /// Enrols `store-<index+1>` and starts it with its own slice of data.
    pub async fn add_node(&mut self, index: usize) -> anyhow::Result<()> {
        let store_id = format!("store-{}", index + 1);
        let bundle = self.options.data_dir.join("bundles").join(&store_id);
        let bundle = if bundle.join("cert.pem").exists() {
            bundle
        } else {
            let bundle =
                issue_bundle(&self.coordinator_dir, Role::Node, &store_id, &bundle).await?;
            record_enrolment(&self.coordinator_config, Role::Node, &store_id, &bundle).await?;
            bundle
        };
        let mut config = NodeConfig::new(
            self.coordinator_url.clone(),
            bundle,
            self.options.data_dir.join("nodes").join(&store_id),
            DataSettings {
                world_seed: self.options.world_seed,
                store_index: u32::try_from(index).unwrap_or(u32::MAX),
                train_samples: self.options.train_samples,
            },
        );
        config.lineage = self.lineage.clone();
        config.backend = self.options.backend;
        config.camera = self.options.camera.clone();
        config.metrics = self.options.metrics.clone();
        config.local_store = self.options.local_store.clone();
        config.poll_wait_secs = self.options.poll_wait_secs;
        if self.options.node_telemetry {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            config.telemetry_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let (status_tx, status) = watch::channel(NodeStatus::default());
        let (model_tx, model) = watch::channel(None);
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(backroom_store_node::run_with_model(
            config.clone(),
            wait_true(rx),
            status_tx,
            model_tx,
        ));
        self.nodes.push(SandboxNode {
            store_id,
            status,
            model,
            config,
            shutdown,
            task,
        });
        Ok(())
    }

    /// Stops node `index` gracefully and waits for it; its data directory is kept.
    pub async fn stop_node(&mut self, index: usize) -> anyhow::Result<()> {
        let node = self
            .nodes
            .get_mut(index)
            .with_context(|| format!("no node {index}"))?;
        let _ = node.shutdown.send(true);
        let task = std::mem::replace(&mut node.task, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .context("node did not stop within 30 s")?
            .context("node task failed")?
    }

    /// Starts node `index` again with the same configuration and data directory.
    pub async fn restart_node(&mut self, index: usize) -> anyhow::Result<()> {
        let node = self
            .nodes
            .get_mut(index)
            .with_context(|| format!("no node {index}"))?;
        let (status_tx, status) = watch::channel(NodeStatus::default());
        let (model_tx, model) = watch::channel(None);
        let (shutdown, rx) = watch::channel(false);
        node.task = tokio::spawn(backroom_store_node::run_with_model(
            node.config.clone(),
            wait_true(rx),
            status_tx,
            model_tx,
        ));
        node.status = status;
        node.model = model;
        node.shutdown = shutdown;
        Ok(())
    }

    /// Stops the coordinator gracefully (nodes keep running and see it go away).
    pub async fn stop_coordinator(&mut self) -> anyhow::Result<()> {
        let _ = self.coordinator_shutdown.send(true);
        let task = std::mem::replace(&mut self.coordinator_task, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .context("coordinator did not stop within 30 s")?
            .context("coordinator task failed")?
    }

    /// Starts the coordinator again on the same data directory and address.
    pub async fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        let mut attempt = 0;
        let mut coordinator = loop {
            match Coordinator::start(self.coordinator_config.clone()).await {
                Ok(coordinator) => break coordinator,
                // The old listener may take a moment to release the port.
                Err(error) if attempt < 20 => {
                    attempt += 1;
                    tracing::debug!("coordinator restart attempt {attempt}: {error:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => return Err(error),
            }
        };
        if let Some(tap) = &self.wire_tap {
            coordinator.set_wire_tap(tap.clone());
        }
        let (shutdown, rx) = watch::channel(false);
        self.coordinator_task = tokio::spawn(coordinator.serve(wait_true(rx)));
        self.coordinator_shutdown = shutdown;
        self.admin = client::admin(&self.coordinator_url, "localhost", &self.admin_bundle).await?;
        Ok(())
    }

    /// Path of the coordinator's model root public key (what nodes trust).
    pub fn model_root_key(&self) -> PathBuf {
        crate::evaluate::root_key_file(&self.coordinator_dir)
    }

    /// Waits until every node reports `version` installed.
    pub async fn wait_for_installed(&self, version: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for node in &self.nodes {
            let mut status = node.status.clone();
            let waited = tokio::time::timeout_at(
                deadline,
                status.wait_for(|s| s.installed_version >= version),
            )
            .await;
            match waited {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => bail!(
                    "node {} stopped before installing version {version}",
                    node.store_id
                ),
                Err(_) => {
                    let s = node.status.borrow().clone();
                    bail!(
                        "node {} did not install version {version} in {timeout:?} (installed {}, last error {:?})",
                        node.store_id,
                        s.installed_version,
                        s.last_error
                    )
                }
            }
        }
        Ok(())
    }

    /// Starts a round and follows it to a final state, calling `progress` on every change.
    pub async fn run_round(
        &mut self,
        spec: pb::RoundSpec,
        mut progress: impl FnMut(&pb::Round),
    ) -> anyhow::Result<pb::Round> {
        let round = self
            .admin
            .start_round(pb::StartRoundRequest {
                lineage: self.lineage.clone(),
                spec: Some(spec),
            })
            .await
            .map_err(|s| anyhow::anyhow!("cannot start a round: {}", s.message()))?
            .into_inner();
        progress(&round);
        let mut stream = self
            .admin
            .watch_round(pb::GetRoundRequest {
                round_id: round.round_id.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("cannot watch round: {}", s.message()))?
            .into_inner();
        let mut last = round;
        while let Some(update) = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("round watch broke: {}", s.message()))?
        {
            progress(&update);
            last = update;
        }
        Ok(last)
    }

    /// Stops every node and then the coordinator, gracefully.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let _ = node.shutdown.send(true);
        }
        for node in self.nodes {
            match tokio::time::timeout(Duration::from_secs(30), node.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(store = %node.store_id, "node ended with an error: {error:#}")
                }
                Ok(Err(error)) => {
                    tracing::warn!(store = %node.store_id, %error, "node task failed")
                }
                Err(_) => tracing::warn!(store = %node.store_id, "node did not stop within 30 s"),
            }
        }
        let _ = self.coordinator_shutdown.send(true);
        match tokio::time::timeout(Duration::from_secs(30), self.coordinator_task).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => Err(anyhow::anyhow!("coordinator task failed: {error}")),
            Err(_) => Err(anyhow::anyhow!("coordinator did not stop within 30 s")),
        }
    }
}

/// The actor of the sandbox's own entries in the audit log (its enrolments).
pub const SANDBOX_ACTOR: &str = "cli/pilot";

/// Records an enrolment the sandbox made in its coordinator's audit log.
async fn record_enrolment(
    config: &CoordinatorConfig,
    role: Role,
    name: &str,
    bundle: &Path,
) -> anyhow::Result<()> {
    use backroom_coordinator::audit;
    let details = audit::hooks::enrolment_details(role, name, &BundlePaths::new(bundle));
    let subject = format!("{role}/{name}");
    audit::append_offline(config, SANDBOX_ACTOR, "enrol", &subject, &details)
        .await
        .with_context(|| format!("cannot record the enrolment of {subject} in the audit log"))?;
    Ok(())
}

/// Issues a bundle from the coordinator's CA (blocking work off the runtime).
pub async fn issue_bundle(
    coordinator_dir: &Path,
    role: Role,
    name: &str,
    out_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let pki = coordinator_dir.join("pki");
    let name = name.to_owned();
    let out = out_dir.to_owned();
    let bundle: BundlePaths = tokio::task::spawn_blocking(move || {
        let ca = CertificateAuthority::load_or_create(&pki, &[])?;
        ca.issue_bundle(role, &name, &out)
    })
    .await
    .context("enrolment task failed")?
    .context("cannot issue a bundle")?;
    Ok(bundle.dir)
}
