//! `backroom bench load`: many lightweight store nodes in this process against a real
//! coordinator over mutually authenticated TLS on loopback. The coordinator runs in this
//! process, or (`--coordinator-process`) as a child `backroom coordinator` whose memory is then
//! read on its own from `/proc/PID/status`.
//!
//! Each simulated node has its own client certificate (issued by the coordinator's CA) and its
//! own TLS connection, and speaks the node protocol as a store does: `Hello`, heartbeats at the
//! interval the coordinator asks for, long polls for a task, metric syncs (one noised hourly
//! release each, at `--metric-sync-secs`), and, when sampled, a chunked upload of a delta with
//! its SHA-256. What it leaves out is the work a store does in between: it trains nothing (its
//! delta is uniform noise scaled to about half the round's clip norm), and it takes each
//! version it is offered as installed without downloading it. So the figures are the
//! coordinator's own cost per round and per connected node: sampling, every accepted update
//! made durable (file and database) before it is acknowledged, aggregation of a small network,
//! signing and publishing, the long polls of every node, heartbeats and metric releases.
//!
//! The lineage's network is tiny (`[model]` conv_channels [2, 4, 4], hidden 8: 2,354
//! parameters), as in Flower's simulations of many clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use backroom_coordinator::Coordinator;
use backroom_coordinator::config::CoordinatorConfig;
use backroom_coordinator::identity::{CertificateAuthority, IssuedIdentity, Role};
use backroom_coordinator::ledger::Budget;
use backroom_models::ShelfNetConfig;
use backroom_proto::v1 as pb;
use backroom_proto::v1::admin_service_client::AdminServiceClient;
use backroom_proto::v1::node_service_client::NodeServiceClient;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct LoadSettings {
    /// Simulated store nodes, each with its own certificate and connection.
    pub nodes: usize,
    /// Rounds to run, each sampling every node (q = 1).
    pub rounds: u32,
    /// Seconds each node waits in one long poll.
    pub poll_wait_secs: u32,
    /// Seconds of heartbeats and polls after the rounds, before the memory is read.
    pub idle_secs: u64,
    /// Seconds between one node's metric syncs (one noised hourly release each); 0: none.
    pub metric_sync_secs: u64,
    /// Run the coordinator as a child process (`backroom coordinator`), so its memory is read
    /// apart from the simulated nodes' (and each process has its own file-descriptor limit).
    pub coordinator_process: bool,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub nodes: usize,
    pub parameters: usize,
    /// Seconds to issue the nodes' certificates and open their TLS connections (`Hello` done).
    pub connect_secs: f64,
    /// Per round: seconds from `StartRound` to the published version, and updates counted.
    pub rounds: Vec<RoundFigures>,
    /// Heartbeats and polls answered over the whole run.
    pub heartbeats: u64,
    pub polls: u64,
    /// Metric syncs answered, and noised releases the coordinator stored from them.
    pub metric_syncs: u64,
    pub metric_releases_accepted: u64,
    /// Whether the coordinator ran as a child process.
    pub coordinator_process: bool,
    /// Resident memory of this process (every simulated node, and the coordinator unless it
    /// ran as a child process) after the idle period, and its peak, bytes.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// The coordinator process's resident memory after the idle period, and its peak, bytes
    /// (only when it ran as a child process).
    pub coordinator_rss_bytes: Option<u64>,
    pub coordinator_peak_rss_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoundFigures {
    pub round_id: String,
    /// Seconds from `StartRound` until the watch showed the round training (nodes sampled)
    /// and aggregating (every update in).
    pub training_secs: f64,
    pub aggregating_secs: f64,
    pub secs: f64,
    pub updates: u32,
    pub published_version: u64,
}

/// Counters the simulated nodes share.
#[derive(Default)]
struct Counters {
    heartbeats: AtomicU64,
    polls: AtomicU64,
    uploads: AtomicU64,
    metric_syncs: AtomicU64,
    metric_releases_accepted: AtomicU64,
    errors: AtomicU64,
}

const LINEAGE: &str = "shelfnet";
/// Seconds between one node's heartbeats (the coordinator's `heartbeat_interval_secs`).
const HEARTBEAT_SECS: u32 = 10;
const SERVER_NAME: &str = "localhost";

/// The tiny network of the simulation.
pub fn tiny_network() -> ShelfNetConfig {
    ShelfNetConfig::new()
        .with_conv_channels(vec![2, 4, 4])
        .with_hidden(8)
}

/// Runs the simulation in a temporary data directory; `progress` gets one line per step.
pub async fn run(settings: LoadSettings, progress: impl Fn(&str)) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(settings.nodes >= 1, "--nodes must be at least 1");
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let data_dir = dir.path().join("coordinator");
    let pki_dir = CoordinatorConfig::for_data_dir(&data_dir).pki_dir();
    let parameters: usize = backroom_models::parameter_layout(&tiny_network())
        .iter()
        .map(backroom_models::TensorSpec::numel)
        .sum();
    let server = if settings.coordinator_process {
        progress("starting the coordinator as a child process");
        Server::start_child(dir.path(), &data_dir).await?
    } else {
        Server::start_in_process(&data_dir).await?
    };
    let url = format!("https://{}", server.addr());
    // The nodes stop first, then the coordinator.
    let (stop_tx, stop_rx) = watch::channel(false);

    progress(&format!(
        "issuing {} node certificates and connecting over mTLS",
        settings.nodes
    ));
    let started = Instant::now();
    let nodes = settings.nodes;
    let (ca_pem, identities) = tokio::task::spawn_blocking(move || {
        let ca = CertificateAuthority::load_or_create(&pki_dir, &[])?;
        let admin = ca.issue_identity(Role::Admin, "load-admin")?;
        let ca_pem = admin.ca_pem.clone();
        let mut issued = vec![admin];
        for i in 0..nodes {
            issued.push(ca.issue_identity(Role::Node, &format!("sim-{i:05}"))?);
        }
        anyhow::Ok((ca_pem, issued))
    })
    .await
    .context("certificate task failed")??;
    let mut identities = identities.into_iter();
    let admin_identity = identities.next().context("no admin identity")?;
    let mut admin = AdminServiceClient::new(connect(&url, &ca_pem, &admin_identity).await?);

    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::with_capacity(nodes);
    let mut installed = Vec::with_capacity(nodes);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(nodes);
    for (index, identity) in identities.enumerate() {
        let channel = connect(&url, &ca_pem, &identity).await?;
        let node = SimNode {
            index,
            client: NodeServiceClient::new(channel),
            counters: Arc::clone(&counters),
            poll_wait_secs: settings.poll_wait_secs,
            metric_sync: Duration::from_secs(settings.metric_sync_secs),
            installed: Arc::new(AtomicU64::new(0)),
        };
        installed.push(Arc::clone(&node.installed));
        tasks.push(tokio::spawn(node.run(stop_rx.clone(), ready_tx.clone())));
    }
    drop(ready_tx);
    for _ in 0..nodes {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(error.context("a simulated node could not say hello")),
            None => anyhow::bail!("simulated nodes ended before saying hello"),
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    progress(&format!(
        "{nodes} nodes connected in {connect_secs:.1} s; {parameters} parameters per update"
    ));

    let mut rounds = Vec::new();
    for _ in 0..settings.rounds {
        // Like a chain's rounds: the next starts once every store runs the last version.
        let newest = rounds
            .last()
            .map_or(1, |r: &RoundFigures| r.published_version);
        let everyone = tokio::time::timeout(Duration::from_secs(120), async {
            while installed.iter().any(|v| v.load(Ordering::Relaxed) < newest) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        everyone
            .await
            .with_context(|| format!("not every node was offered v{newest} within 120 s"))?;
        let figures = run_round(&mut admin, nodes).await?;
        progress(&format!(
            "round {}: {} updates, v{} published in {:.3} s (sampled at {:.3} s, all updates \
             in at {:.3} s)",
            figures.round_id,
            figures.updates,
            figures.published_version,
            figures.secs,
            figures.training_secs,
            figures.aggregating_secs
        ));
        rounds.push(figures);
    }
    if settings.idle_secs > 0 {
        progress(&format!(
            "keeping {nodes} nodes connected (heartbeats, long polls) for {} s",
            settings.idle_secs
        ));
        tokio::time::sleep(Duration::from_secs(settings.idle_secs)).await;
    }
    let coordinator_memory = server.child_rss();
    let rss_bytes = crate::bench_aggregate::rss_bytes();
    let peak_rss_bytes = crate::bench_aggregate::peak_rss_bytes();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    drop(admin);
    server.stop().await?;
    let errors = counters.errors.load(Ordering::Relaxed);
    anyhow::ensure!(
        errors == 0,
        "{errors} simulated node RPC(s) failed (see the log)"
    );
    Ok(LoadReport {
        nodes,
        parameters,
        connect_secs,
        rounds,
        heartbeats: counters.heartbeats.load(Ordering::Relaxed),
        polls: counters.polls.load(Ordering::Relaxed),
        metric_syncs: counters.metric_syncs.load(Ordering::Relaxed),
        metric_releases_accepted: counters.metric_releases_accepted.load(Ordering::Relaxed),
        coordinator_process: settings.coordinator_process,
        rss_bytes,
        peak_rss_bytes,
        coordinator_rss_bytes: coordinator_memory.map(|(rss, _)| rss),
        coordinator_peak_rss_bytes: coordinator_memory.map(|(_, peak)| peak),
    })
}

/// The coordinator under load: a task of this process or a child process.
enum Server {
    InProcess {
        addr: std::net::SocketAddr,
        stop: watch::Sender<bool>,
        served: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
    Child {
        addr: std::net::SocketAddr,
        child: KillOnDrop,
        log: PathBuf,
    },
}

/// A child process killed if it is still running when dropped (a run that fails half-way
/// leaves no coordinator behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Server {
    fn config(data_dir: &Path) -> CoordinatorConfig {
        let mut config = CoordinatorConfig::for_data_dir(data_dir);
        config.model = tiny_network();
        // No noise in these rounds: a non-private lineage (an experiment, not a deployment).
        config.privacy_budget = Budget {
            epsilon_max: None,
            delta: 1e-5,
        };
        config.heartbeat_interval_secs = HEARTBEAT_SECS;
        config.sampling_timeout = Duration::from_secs(120);
        config
    }

    async fn start_in_process(data_dir: &Path) -> anyhow::Result<Self> {
        let coordinator = Coordinator::start(Self::config(data_dir)).await?;
        let addr = coordinator.local_addr();
        let (stop, mut stopped) = watch::channel(false);
        let served = tokio::spawn(coordinator.serve(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        Ok(Self::InProcess { addr, stop, served })
    }

    /// `backroom coordinator --config` with the same settings as in process, its log in
    /// `dir/coordinator.log`; returns once it accepts connections.
    async fn start_child(dir: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        let config = Self::config(data_dir);
        // A free port, released for the child to bind (a race only with other programs).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free loopback port")?;
        let toml = format!(
            "listen = \"{addr}\"\ndata_dir = {data_dir:?}\nlineage = \"{LINEAGE}\"\n\
             heartbeat_interval_secs = {HEARTBEAT_SECS}\nsampling_timeout_secs = {}\n\
             [privacy]\nunlimited = true\ndelta = {}\n\
             [model]\nconv_channels = {:?}\nhidden = {}\nkernel_size = {}\n",
            config.sampling_timeout.as_secs(),
            config.privacy_budget.delta,
            config.model.conv_channels,
            config.model.hidden,
            config.model.kernel_size,
            data_dir = data_dir
                .to_str()
                .context("the temporary directory's path is not UTF-8")?,
        );
        let config_path = dir.join("coordinator.toml");
        std::fs::write(&config_path, toml).context("cannot write the coordinator's config")?;
        let log = dir.join("coordinator.log");
        let log_file = std::fs::File::create(&log).context("cannot create the coordinator log")?;
        let exe = std::env::current_exe().context("cannot find this program's executable")?;
        let mut child = std::process::Command::new(exe)
            .arg("coordinator")
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("cannot start `backroom coordinator`")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().context("cannot watch the coordinator")? {
                anyhow::bail!(
                    "the coordinator exited ({status}) before it listened:\n{}",
                    log_tail(&log)
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Self::Child {
                    addr,
                    child: KillOnDrop(child),
                    log,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!(
                    "the coordinator did not listen on {addr} within 120 s:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Self::InProcess { addr, .. } | Self::Child { addr, .. } => *addr,
        }
    }

    /// The child coordinator's resident memory now and at its peak, bytes.
    fn child_rss(&self) -> Option<(u64, u64)> {
        match self {
            Self::InProcess { .. } => None,
            Self::Child { child, .. } => Some(crate::bench_aggregate::rss_of(child.0.id())),
        }
    }

    /// Stops the coordinator as an operator would (SIGTERM for a child) and checks that it
    /// stopped cleanly within 30 s.
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::InProcess { stop, served, .. } => {
                let _ = stop.send(true);
                match tokio::time::timeout(Duration::from_secs(30), served).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(error)) => anyhow::bail!("coordinator task failed: {error}"),
                    Err(_) => anyhow::bail!("the coordinator did not stop within 30 s"),
                }
            }
            Self::Child { mut child, log, .. } => {
                let signalled = std::process::Command::new("kill")
                    .args(["-TERM", &child.0.id().to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
                if !signalled {
                    let _ = child.0.kill();
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(status) =
                        child.0.try_wait().context("cannot watch the coordinator")?
                    {
                        anyhow::ensure!(
                            status.success(),
                            "the coordinator exited {status} when stopped:\n{}",
                            log_tail(&log)
                        );
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        let _ = child.0.kill();
                        let _ = child.0.wait();
                        anyhow::bail!("the coordinator did not stop within 30 s of SIGTERM");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The last lines of a log, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts a round sampling every node and follows it to its end.
async fn run_round(
    admin: &mut AdminServiceClient<Channel>,
    nodes: usize,
) -> anyhow::Result<RoundFigures> {
    let clients = u32::try_from(nodes).context("too many nodes")?;
    let spec = pb::RoundSpec {
        strategy: "fedavg".into(),
        target_clients: clients,
        min_clients: clients,
        deadline_secs: 120,
        local_steps: 1,
        batch_size: 1,
        learning_rate: 0.01,
        clip_norm: 1.0,
        noise_multiplier: 0.0,
        noise_mode: "central".into(),
        adaptive_clipping: None,
        server_learning_rate: None,
        trim_fraction: None,
        proximal_mu: 0.0,
    };
    let started = Instant::now();
    let round = admin
        .start_round(pb::StartRoundRequest {
            lineage: LINEAGE.into(),
            spec: Some(spec),
        })
        .await
        .map_err(|s| anyhow::anyhow!("cannot start a round: {}", s.message()))?
        .into_inner();
    let mut watch = admin
        .watch_round(pb::GetRoundRequest {
            round_id: round.round_id.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("cannot watch the round: {}", s.message()))?
        .into_inner();
    let mut last = round;
    let (mut training_secs, mut aggregating_secs) = (0.0, 0.0);
    while let Some(update) = watch
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("round watch broke: {}", s.message()))?
    {
        let at = started.elapsed().as_secs_f64();
        if update.state != last.state || training_secs == 0.0 {
            if update.state == pb::RoundState::Training as i32 {
                training_secs = at;
            } else if update.state == pb::RoundState::Aggregating as i32 {
                aggregating_secs = at;
            }
        }
        last = update;
    }
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        last.state == pb::RoundState::Published as i32,
        "round {} ended {:?}: {}",
        last.round_id,
        pb::RoundState::try_from(last.state).unwrap_or(pb::RoundState::Unspecified),
        last.failure_reason
    );
    Ok(RoundFigures {
        round_id: last.round_id,
        training_secs,
        aggregating_secs,
        secs,
        updates: last.updates_accepted,
        published_version: last.published_version,
    })
}

/// A TLS channel with `identity` (each simulated node its own connection).
async fn connect(url: &str, ca_pem: &str, identity: &IssuedIdentity) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
        .domain_name(SERVER_NAME);
    Endpoint::from_shared(url.to_owned())
        .context("coordinator URL")?
        .tls_config(tls)
        .context("TLS configuration")?
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

struct SimNode {
    /// The node's number (its certificate names it `sim-NNNNN`).
    index: usize,
    client: NodeServiceClient<Channel>,
    counters: Arc<Counters>,
    poll_wait_secs: u32,
    /// Time between metric syncs (zero: none).
    metric_sync: Duration,
    /// The version the node reports (shared with its heartbeats).
    installed: Arc<AtomicU64>,
}

impl SimNode {
    /// Hello, then long polls (uploading a delta for each task) with heartbeats beside them,
    /// until `stop`.
    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        ready: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
    ) {
        let hello = self
            .client
            .hello(pb::HelloRequest {
                lineage: LINEAGE.into(),
                installed_version: 0,
                backend: "simulated".into(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
            })
            .await;
        let interval = match hello {
            Ok(response) => {
                let _ = ready.send(Ok(())).await;
                Duration::from_secs(u64::from(
                    response.into_inner().heartbeat_interval_secs.max(1),
                ))
            }
            Err(status) => {
                let _ = ready
                    .send(Err(anyhow::anyhow!("hello refused: {}", status.message())))
                    .await;
                return;
            }
        };
        drop(ready);
        let mut heartbeat_client = self.client.clone();
        let counters = Arc::clone(&self.counters);
        let installed = Arc::clone(&self.installed);
        let mut heartbeat_stop = stop.clone();
        let heartbeats = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = heartbeat_stop.wait_for(|s| *s) => return,
                    _ = ticks.tick() => {}
                }
                let sent = heartbeat_client
                    .heartbeat(pb::HeartbeatRequest {
                        lineage: LINEAGE.into(),
                        installed_version: installed.load(Ordering::Relaxed),
                        backend: "simulated".into(),
                    })
                    .await;
                match sent {
                    Ok(_) => counters.heartbeats.fetch_add(1, Ordering::Relaxed),
                    // The coordinator stops first at the end of a run.
                    Err(_) if *heartbeat_stop.borrow() => return,
                    Err(status) => {
                        tracing::warn!(%status, "simulated heartbeat failed");
                        counters.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        let metric_sync = (!self.metric_sync.is_zero()).then(|| {
            tokio::spawn(sync_metrics(
                self.index,
                self.client.clone(),
                self.metric_sync,
                Arc::clone(&self.counters),
                stop.clone(),
            ))
        });
        let mut done: Option<String> = None;
        // Like a store: the key set comes with the first poll, then only when it changes.
        let mut key_set_version = 0;
        loop {
            let poll = self.client.poll_task(pb::PollTaskRequest {
                lineage: LINEAGE.into(),
                installed_version: self.installed.load(Ordering::Relaxed),
                wait_secs: self.poll_wait_secs,
                key_set_version,
            });
            let answer = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                answer = poll => answer,
            };
            let task = match answer {
                Ok(response) => {
                    self.counters.polls.fetch_add(1, Ordering::Relaxed);
                    let response = response.into_inner();
                    if let Some(version) = key_set_version_of(&response.key_set) {
                        key_set_version = version;
                    }
                    // Taken as installed at once (a store downloads and verifies it first):
                    // otherwise the coordinator answers every poll at once with the offer.
                    self.installed
                        .fetch_max(response.offered_version, Ordering::Relaxed);
                    response.task
                }
                Err(status) => {
                    if *stop.borrow() {
                        break;
                    }
                    tracing::warn!(%status, "simulated poll failed");
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(task) = task else { continue };
            if done.as_deref() == Some(task.round_id.as_str()) {
                continue;
            }
            match self.upload(&task).await {
                Ok(()) => {
                    self.counters.uploads.fetch_add(1, Ordering::Relaxed);
                    done = Some(task.round_id);
                }
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    done = Some(task.round_id);
                }
                Err(status) => {
                    tracing::warn!(round_id = %task.round_id, %status, "simulated upload failed");
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let _ = heartbeats.await;
        if let Some(task) = metric_sync {
            let _ = task.await;
        }
    }

    /// A random delta scaled to 0.45–0.5 of the clip norm, uploaded as a store uploads its update.
    async fn upload(&mut self, task: &pb::TrainTask) -> Result<(), tonic::Status> {
        let n = usize::try_from(task.num_parameters)
            .map_err(|_| tonic::Status::invalid_argument("parameter count"))?;
        let (data, sha256) = {
            let mut rng = rand::rng();
            let mut delta: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let norm = delta
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            let scale = (0.5 * f64::from(task.clip_norm) / norm.max(1e-12)) as f32;
            let jitter: f32 = rng.random_range(0.9..1.0);
            for v in &mut delta {
                *v *= scale * jitter;
            }
            let bytes: Vec<u8> = delta.iter().flat_map(|v| v.to_le_bytes()).collect();
            let sha256 = Sha256::digest(&bytes).to_vec();
            (Arc::new(bytes), sha256)
        };
        let header = pb::UpdateHeader {
            round_id: task.round_id.clone(),
            base_version: task.base_version,
            num_parameters: task.num_parameters,
            num_examples: 1,
            within_clip_norm: false,
        };
        let chunks = backroom_store_node::trainer::update_chunks(header, data, sha256);
        self.client
            .upload_update(futures::stream::iter(chunks))
            .await
            .map(|_| ())
    }
}

/// Every `every` (the first after a random part of it, so the nodes spread out), one noised
/// hourly release of one camera, as a store's metric sync sends it: its own idempotency key, a
/// noise scale that pays for the declared ρ. The values are random; the coordinator checks form
/// and stores them.
async fn sync_metrics(
    index: usize,
    mut client: NodeServiceClient<Channel>,
    every: Duration,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let first = every.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
    // Hourly windows before the run started, going back one hour per sync.
    let hour = 3_600i64;
    let start = time::OffsetDateTime::now_utc().unix_timestamp() / hour * hour;
    for window in 0u64.. {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = ticks.tick() => {}
        }
        let window_start_unix = start - hour * (window as i64 + 1);
        let batch = {
            let mut rng = rand::rng();
            // Gaussian mechanism: ρ = Σ (sensitivity / scale)² / 2 = 3 · (1/4)² / 2 ≈ 0.094.
            let metric = |name: &str, value: f64| pb::NoisedMetric {
                name: name.into(),
                value: Some(value),
                suppressed: false,
                noise_scale: 4.0,
                sensitivity: 1.0,
            };
            pb::MetricBatch {
                idempotency_key: format!("sim-{index:05}-cam0-{window_start_unix}"),
                window_start_unix,
                window_secs: hour as u32,
                camera_id: 0,
                slots_per_frame: 8,
                seconds_per_frame: 1,
                rho: 0.1,
                metrics: vec![
                    metric("frames", rng.random_range(3_000.0..3_600.0)),
                    metric("out_of_stock_events", rng.random_range(0.0..20.0)),
                    metric("out_of_stock_minutes", rng.random_range(0.0..200.0)),
                ],
            }
        };
        let sent = client
            .sync_metrics(pb::SyncMetricsRequest {
                batches: vec![batch],
            })
            .await;
        match sent {
            Ok(response) => {
                counters.metric_syncs.fetch_add(1, Ordering::Relaxed);
                counters
                    .metric_releases_accepted
                    .fetch_add(u64::from(response.into_inner().accepted), Ordering::Relaxed);
            }
            Err(_) if *stop.borrow() => return,
            Err(status) => {
                tracing::warn!(%status, "simulated metric sync failed");
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The version of a served key set (canonical JSON with a `version` field), if one came.
fn key_set_version_of(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()?
        .get("version")?
        .as_u64()
}
