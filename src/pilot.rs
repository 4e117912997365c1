//! `backroom pilot`: a whole federation on one machine, from nothing, in one command.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backroom_proto::v1 as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use backroom_coordinator::budget::format_epsilon;
use backroom_models::BackendChoice;

use crate::evaluate::{held_out, load_verified_params, load_verifying_key};
use crate::metrics_report::NoisedTotal;
use crate::sandbox::{Sandbox, SandboxOptions};

/// The pilot's demonstration budget. Three stores cannot buy a small ε: noise that would make ε
/// small (z ≈ 1) is ~100× the averaged signal of three 71,666-parameter deltas, so the pilot runs
/// with little noise and a correspondingly large ε, and says so. Deployments with hundreds of
/// stores per round get single-digit ε (see the summary's "at scale" line).
pub const PILOT_EPSILON_BUDGET: f64 = 100_000.0;

/// Knobs of the pilot (all have defaults that finish in a few minutes on 2 cores).
#[derive(Clone, Debug)]
pub struct PilotOptions {
    /// Keep everything here instead of a temporary directory.
    pub data_dir: Option<PathBuf>,
    pub stores: usize,
    pub rounds: u32,
    pub local_steps: u32,
    pub batch_size: u32,
    pub learning_rate: f32,
    pub clip_norm: f32,
    pub noise_multiplier: f32,
    /// The lineage's ε budget (ε_max) at δ = `delta`.
    pub epsilon_budget: f64,
    pub delta: f64,
    pub world_seed: u64,
    pub train_samples: usize,
    pub test_samples: usize,
    /// Draw progress bars (on stderr).
    pub progress: bool,
    /// Compute backend of every store node.
    pub backend: BackendChoice,
    /// How long each round waits for the stores' updates.
    pub round_deadline_secs: u32,
}

impl Default for PilotOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            stores: 3,
            rounds: 5,
            local_steps: 60,
            batch_size: 32,
            learning_rate: 0.01,
            clip_norm: 5.0,
            noise_multiplier: 0.01,
            epsilon_budget: PILOT_EPSILON_BUDGET,
            delta: 1e-5,
            world_seed: 2024,
            train_samples: 512,
            test_samples: 1000,
            progress: true,
            backend: BackendChoice::Auto,
            round_deadline_secs: 300,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    pub id: String,
    pub installed_version: u64,
    pub backend: String,
    pub rounds_trained: u32,
    pub frames_processed: u64,
    /// Frames dropped unprocessed because the node was behind (load shedding).
    pub frames_dropped: u64,
    /// Regions redaction filled (the synthetic shelves show no people, so these are the
    /// detectors' false positives on shelf images).
    pub faces_redacted: u64,
    /// Frame events and images in the node's encrypted local store.
    pub frames_stored: u64,
    pub images_stored: u64,
    pub windows_synced: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoundSummary {
    pub round_id: String,
    pub published_version: u64,
    pub updates_accepted: u32,
    pub updates_refused: u32,
    pub accuracy: f32,
    /// Mean cross-entropy of the published version on the held-out split.
    pub loss: f64,
    /// Poisson sampling rate q charged for the round.
    pub sampling_rate: f64,
    /// The lineage's ε after this round (`None`: infinite, i.e. no noise).
    pub epsilon_after: Option<f64>,
    pub seconds: f64,
}

/// The shelf metrics operations see: sums of the stores' noised releases.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MetricTotals {
    /// Always true: every value is a noised release or a sum of them.
    pub noised: bool,
    pub stores: usize,
    pub windows: usize,
    pub frames: NoisedTotal,
    pub out_of_stock_events: NoisedTotal,
    pub out_of_stock_minutes: NoisedTotal,
    /// Share of slot observations that were stocked, derived from the noised values.
    pub occupancy: Option<f64>,
    /// Largest ρ any store spent on the UTC day of its last window, and that day's budget.
    pub rho_spent_per_store_day: f64,
    pub rho_budget_per_store_day: f64,
    /// Windows refused by the stores because a day's budget was spent.
    pub releases_refused: u64,
}

/// ε of a larger deployment with the same accountant, printed beside the pilot's.
#[derive(Clone, Debug, Serialize)]
pub struct AtScale {
    pub stores: u32,
    pub stores_per_round: u32,
    pub noise_multiplier: f64,
    pub rounds: u64,
    pub epsilon: Option<f64>,
}

impl AtScale {
    fn compute(delta: f64) -> anyhow::Result<Self> {
        let (stores, stores_per_round, noise_multiplier, rounds) = (10_000u32, 100u32, 1.0, 100);
        let event = backroom_coordinator::privacy::DpEvent {
            sampling_rate: f64::from(stores_per_round) / f64::from(stores),
            noise_multiplier,
            rounds,
        };
        let report = backroom_coordinator::privacy::compute_epsilon(&[event], delta)
            .map_err(|e| anyhow::anyhow!("privacy accounting: {e}"))?;
        Ok(Self {
            stores,
            stores_per_round,
            noise_multiplier,
            rounds,
            epsilon: report.epsilon.is_finite().then_some(report.epsilon),
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PilotSummary {
    pub data_dir: String,
    pub lineage: String,
    pub stores: usize,
    pub rounds: u32,
    pub initial_version: u64,
    pub final_version: u64,
    pub initial_accuracy: f32,
    pub final_accuracy: f32,
    /// Mean cross-entropy on the held-out split of v1 and of the final version (ln 2 ≈ 0.693
    /// for a net that answers 50/50).
    pub initial_loss: f64,
    pub final_loss: f64,
    pub test_samples: usize,
    pub clip_norm: f32,
    pub noise_multiplier: f32,
    /// ε spent by the lineage after the last round, at `delta` (`None`: infinite).
    pub epsilon: Option<f64>,
    pub epsilon_budget: f64,
    pub delta: f64,
    /// Further rounds the budget allows at the pilot's settings.
    pub rounds_remaining: Option<u64>,
    /// For comparison: ε of a deployment with many stores (see [`AtScale`]).
    pub at_scale: AtScale,
    pub per_round: Vec<RoundSummary>,
    pub nodes: Vec<NodeSummary>,
    pub metrics: MetricTotals,
    pub seconds: f64,
}

/// Runs the pilot and returns its summary.
pub async fn run(options: PilotOptions) -> anyhow::Result<PilotSummary> {
    let started = Instant::now();
    let (data_dir, _temp) = match &options.data_dir {
        Some(dir) => {
            if dir.join("coordinator").exists() {
                bail!(
                    "{} already holds a pilot; pass an empty or new --data-dir",
                    dir.display()
                );
            }
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("backroom-pilot-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let bars = MultiProgress::new();
    if !options.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let status = bars.add(ProgressBar::new_spinner());
    status.enable_steady_tick(Duration::from_millis(120));
    status.set_message(format!(
        "starting coordinator and {} store nodes in {}",
        options.stores,
        data_dir.display()
    ));

    let mut sandbox_options = SandboxOptions::new(&data_dir, options.stores);
    sandbox_options.privacy_budget = backroom_coordinator::ledger::Budget {
        epsilon_max: Some(options.epsilon_budget),
        delta: options.delta,
    };
    sandbox_options.world_seed = options.world_seed;
    sandbox_options.train_samples = options.train_samples;
    sandbox_options.backend = options.backend;
    let mut sandbox = Sandbox::start(sandbox_options).await?;
    let result = drive(&mut sandbox, &options, &bars, &status).await;
    status.set_message("stopping nodes and coordinator");
    let stopped = sandbox.shutdown().await;
    status.finish_and_clear();
    let (initial, rounds, nodes, metrics, last, first, privacy) = result?;
    stopped?;
    let delta = options.delta;
    let at_scale = tokio::task::spawn_blocking(move || AtScale::compute(delta))
        .await
        .context("accounting task failed")??;
    Ok(PilotSummary {
        data_dir: if options.data_dir.is_some() {
            data_dir.display().to_string()
        } else {
            "(temporary, removed)".to_owned()
        },
        lineage: "shelfnet".into(),
        stores: options.stores,
        rounds: options.rounds,
        initial_version: initial,
        final_version: rounds.last().map_or(initial, |r| r.published_version),
        initial_accuracy: first.accuracy,
        final_accuracy: last.accuracy,
        initial_loss: first.mean_cross_entropy,
        final_loss: last.mean_cross_entropy,
        test_samples: options.test_samples,
        clip_norm: options.clip_norm,
        noise_multiplier: options.noise_multiplier,
        epsilon: privacy.epsilon_spent,
        epsilon_budget: options.epsilon_budget,
        delta: options.delta,
        rounds_remaining: privacy.rounds_remaining,
        at_scale,
        per_round: rounds,
        nodes,
        metrics,
        seconds: started.elapsed().as_secs_f64(),
    })
}

type Driven = (
    u64,
    Vec<RoundSummary>,
    Vec<NodeSummary>,
    MetricTotals,
    backroom_models::Assessment,
    backroom_models::Assessment,
    pb::PrivacyReport,
);

async fn drive(
    sandbox: &mut Sandbox,
    options: &PilotOptions,
    bars: &MultiProgress,
    status: &ProgressBar,
) -> anyhow::Result<Driven> {
    let trusted = load_verifying_key(&sandbox.model_root_key())?;
    status.set_message("waiting for every store to install the initial model");
    sandbox
        .wait_for_installed(1, Duration::from_secs(120))
        .await?;
    let initial = assessment_of(sandbox, 1, &trusted, options).await?;

    let mut rounds = Vec::new();
    let style =
        ProgressStyle::with_template("round {prefix:>2} [{bar:20}] {pos}/{len} updates  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    for n in 1..=options.rounds {
        status.set_message(format!("round {n} of {}", options.rounds));
        let bar = bars.add(ProgressBar::new(options.stores as u64));
        bar.set_style(style.clone());
        bar.set_prefix(n.to_string());
        let spec = pb::RoundSpec {
            strategy: "fedavg".into(),
            target_clients: u32::try_from(options.stores).unwrap_or(u32::MAX),
            min_clients: u32::try_from(options.stores).unwrap_or(u32::MAX),
            deadline_secs: options.round_deadline_secs,
            local_steps: options.local_steps,
            batch_size: options.batch_size,
            learning_rate: options.learning_rate,
            clip_norm: options.clip_norm,
            noise_multiplier: options.noise_multiplier,
            noise_mode: "central".into(),
            adaptive_clipping: None,
            server_learning_rate: None,
            trim_fraction: None,
            proximal_mu: 0.0,
        };
        let round_started = Instant::now();
        let round = sandbox
            .run_round(spec, |r| {
                bar.set_position(u64::from(r.updates_accepted));
                bar.set_message(state_name(r.state).to_owned());
            })
            .await?;
        if round.state != pb::RoundState::Published as i32 {
            bar.abandon_with_message(format!(
                "{}: {}",
                state_name(round.state),
                round.failure_reason
            ));
            bail!(
                "round {} ended {}: {} (a slow backend, such as wgpu on a software driver, may \
                 need a longer --round-deadline than {} s)",
                round.round_id,
                state_name(round.state),
                round.failure_reason,
                options.round_deadline_secs
            );
        }
        let assessment = assessment_of(sandbox, round.published_version, &trusted, options).await?;
        let accuracy = assessment.accuracy;
        bar.finish_with_message(format!(
            "published v{}  held-out accuracy {:.1}%  ε spent {} of {}",
            round.published_version,
            accuracy * 100.0,
            round
                .epsilon_after
                .map_or_else(|| "∞".to_owned(), format_epsilon),
            format_epsilon(options.epsilon_budget),
        ));
        rounds.push(RoundSummary {
            round_id: round.round_id.clone(),
            published_version: round.published_version,
            updates_accepted: round.updates_accepted,
            updates_refused: round.updates_refused,
            accuracy,
            loss: assessment.mean_cross_entropy,
            sampling_rate: round.sampling_rate,
            epsilon_after: round.epsilon_after,
            seconds: round_started.elapsed().as_secs_f64(),
        });
    }
    let final_version = rounds.last().map_or(1, |r| r.published_version);
    status.set_message(format!(
        "waiting for every store to install v{final_version}"
    ));
    sandbox
        .wait_for_installed(final_version, Duration::from_secs(120))
        .await?;
    status.set_message("waiting for the stores' metric windows to sync");
    wait_for_metric_sync(sandbox, Duration::from_secs(60)).await;
    let metrics = metric_totals(sandbox).await?;
    let nodes = sandbox
        .nodes
        .iter()
        .map(|n| {
            let s = n.status.borrow();
            NodeSummary {
                id: n.store_id.clone(),
                installed_version: s.installed_version,
                backend: s.backend.clone(),
                rounds_trained: s.rounds_trained,
                frames_processed: s.frames_processed,
                frames_dropped: s.frames_dropped,
                faces_redacted: s.faces_redacted,
                frames_stored: s.frames_stored,
                images_stored: s.images_stored,
                windows_synced: s.windows_synced,
            }
        })
        .collect();
    let last = rounds
        .last()
        .map_or(initial, |r| backroom_models::Assessment {
            accuracy: r.accuracy,
            mean_cross_entropy: r.loss,
        });
    let privacy = sandbox
        .admin
        .get_privacy(pb::GetPrivacyRequest {
            lineage: sandbox.lineage.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("cannot read the privacy ledger: {}", s.message()))?
        .into_inner();
    Ok((1, rounds, nodes, metrics, last, initial, privacy))
}

async fn assessment_of(
    sandbox: &Sandbox,
    version: u64,
    trusted: &ed25519_dalek::VerifyingKey,
    options: &PilotOptions,
) -> anyhow::Result<backroom_models::Assessment> {
    let dir = sandbox.coordinator_dir.clone();
    let lineage = sandbox.lineage.clone();
    let trusted = *trusted;
    let (seed, samples) = (options.world_seed, options.test_samples);
    tokio::task::spawn_blocking(move || {
        let params = load_verified_params(&dir, &lineage, version, &trusted)?;
        held_out(&params, seed, samples)
    })
    .await
    .context("evaluation task failed")?
}

/// Waits (bounded) until every node has synced at least one release and has no release left
/// unsynced.
async fn wait_for_metric_sync(sandbox: &Sandbox, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    for node in &sandbox.nodes {
        let mut status = node.status.clone();
        let _ = tokio::time::timeout_at(
            deadline,
            status.wait_for(|s| s.windows_synced > 0 && s.windows_synced >= s.metric_releases),
        )
        .await;
    }
}

async fn metric_totals(sandbox: &mut Sandbox) -> anyhow::Result<MetricTotals> {
    let response = sandbox
        .admin
        .query_metrics(pb::QueryMetricsRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("cannot query metrics: {}", s.message()))?
        .into_inner();
    let mut totals = MetricTotals {
        noised: true,
        stores: usize::try_from(response.stores).unwrap_or(usize::MAX),
        windows: response.rows.len(),
        frames: NoisedTotal::from_response(&response, "frames"),
        out_of_stock_events: NoisedTotal::from_response(&response, "out_of_stock_events"),
        out_of_stock_minutes: NoisedTotal::from_response(&response, "out_of_stock_minutes"),
        occupancy: response.occupancy,
        ..MetricTotals::default()
    };
    for node in &sandbox.nodes {
        let status = node.status.borrow();
        totals.releases_refused += status.releases_refused;
        if let Some(day) = &status.metric_budget {
            totals.rho_spent_per_store_day = totals.rho_spent_per_store_day.max(day.rho_spent);
            totals.rho_budget_per_store_day = day.rho_budget;
        }
    }
    Ok(totals)
}

/// Shared with the coordinator's HTTP API, so the CLI, the pilot and the dashboard name states
/// alike.
pub use backroom_coordinator::http_api::state_name;

/// The human-readable summary.
pub fn render(summary: &PilotSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nBackroom pilot: {} stores, {} DP-FedAvg rounds on lineage {:?} ({:.0} s)",
        summary.stores, summary.rounds, summary.lineage, summary.seconds
    );
    let _ = writeln!(out, "  data directory      {}", summary.data_dir);
    let _ = writeln!(
        out,
        "  held-out accuracy   v{} {:.1}%  ->  v{} {:.1}%   ({} test crops)",
        summary.initial_version,
        summary.initial_accuracy * 100.0,
        summary.final_version,
        summary.final_accuracy * 100.0,
        summary.test_samples
    );
    let _ = writeln!(
        out,
        "  held-out loss       v{} {:.3}  ->  v{} {:.3}   (mean cross-entropy)",
        summary.initial_version, summary.initial_loss, summary.final_version, summary.final_loss,
    );
    let _ = writeln!(
        out,
        "  differential privacy  clip norm C = {}, noise multiplier z = {} (central noise N(0, (zC)^2) on the sum)",
        summary.clip_norm, summary.noise_multiplier
    );
    let epsilon = |e: Option<f64>| e.map_or_else(|| "∞".to_owned(), format_epsilon);
    let _ = writeln!(
        out,
        "                        ε spent {} of budget {} ({} left) at δ = {:e}; {} more round(s) fit",
        epsilon(summary.epsilon),
        format_epsilon(summary.epsilon_budget),
        summary.epsilon.map_or_else(
            || "none".to_owned(),
            |e| format_epsilon((summary.epsilon_budget - e).max(0.0))
        ),
        summary.delta,
        summary
            .rounds_remaining
            .map_or_else(|| "unknown".to_owned(), |r| r.to_string()),
    );
    let _ = writeln!(
        out,
        "                        (3 stores cannot buy a small ε; with {} stores, {} per round, z = {} \
         and {} rounds the same accountant gives ε = {})",
        summary.at_scale.stores,
        summary.at_scale.stores_per_round,
        summary.at_scale.noise_multiplier,
        summary.at_scale.rounds,
        epsilon(summary.at_scale.epsilon),
    );
    let _ = writeln!(
        out,
        "\n  round  version  updates  refused  accuracy  loss    q       ε after  seconds"
    );
    for (i, r) in summary.per_round.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>5}  {:>7}  {:>7}  {:>7}  {:>7.1}%  {:<6.3}  {:<6.3}  {:>7}  {:>7.1}",
            i + 1,
            r.published_version,
            r.updates_accepted,
            r.updates_refused,
            r.accuracy * 100.0,
            r.loss,
            r.sampling_rate,
            epsilon(r.epsilon_after),
            r.seconds
        );
    }
    let _ = writeln!(
        out,
        "\n  store     installed  backend        rounds  frames  dropped  redacted  stored (images)  windows synced"
    );
    for n in &summary.nodes {
        let _ = writeln!(
            out,
            "  {:<8}  v{:<8}  {:<13}  {:>6}  {:>6}  {:>7}  {:>8}  {:>6} ({:>6})  {:>14}",
            n.id,
            n.installed_version,
            n.backend,
            n.rounds_trained,
            n.frames_processed,
            n.frames_dropped,
            n.faces_redacted,
            n.frames_stored,
            n.images_stored,
            n.windows_synced
        );
    }
    let m = &summary.metrics;
    let _ = writeln!(
        out,
        "\n  shelf metrics operations see (noised hourly releases, OpenDP Gaussian under zCDP):"
    );
    let _ = writeln!(
        out,
        "    {} windows from {} stores; rho spent per store on its last day {:.2}/{:.2}, {} windows refused",
        m.windows,
        m.stores,
        m.rho_spent_per_store_day,
        m.rho_budget_per_store_day,
        m.releases_refused
    );
    let _ = writeln!(out, "    frames               {}", m.frames.describe(""));
    let _ = writeln!(
        out,
        "    out-of-stock events  {}",
        m.out_of_stock_events.describe("")
    );
    let _ = writeln!(
        out,
        "    out-of-stock time    {}",
        m.out_of_stock_minutes.describe(" slot-minutes")
    );
    if let Some(occupancy) = m.occupancy {
        let _ = writeln!(
            out,
            "    shelf occupancy      ≈ {:.0}% stocked (derived from the noised values)",
            occupancy * 100.0
        );
    }
    out
}
