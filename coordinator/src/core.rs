//! The coordinator's domain logic, independent of gRPC: rounds, updates, long polls (metrics are
//! in `metrics.rs`).
//! The tonic services in `node_service.rs` and `admin_service.rs` are thin adapters over this.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backroom_proto::v1::{TrainTask, UpdateHeader};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{CoordinatorError, Result};
use crate::group_commit::UpdateCommits;
use crate::poll_view::{PollView, PollViews};
use crate::presence::{Presence, Reported};
use crate::registry::{Registry, now_unix_ms};
use crate::round::{RoundRecord, RoundSpec, RoundState};
use crate::store::{QuarantineRow, RoundProgress, Store, UpdateRow};

/// How many refused updates of one node in one round have their bytes kept; later ones are
/// recorded without them, so a misbehaving node cannot fill the disk.
pub const QUARANTINE_BLOBS_PER_NODE_AND_ROUND: u64 = 3;

/// Tunables that are not part of any one round.
#[derive(Clone, Debug)]
pub struct Settings {
    pub heartbeat_interval_secs: u32,
    pub max_update_bytes: u64,
    pub sampling_timeout: Duration,
    pub overselect: f32,
    pub online_window: Duration,
    /// How often expired frame requests are closed.
    pub frame_request_sweep: Duration,
    /// Sealed frame exports, each kept until its request expires.
    pub exports_dir: PathBuf,
    /// Largest sealed frame export accepted from a node.
    pub max_export_bytes: u64,
    /// Whether a round's version becomes stable at once (else it waits for a promote).
    pub publish_rounds_to_stable: bool,
    /// This process's name among replicas sharing the database (holder of round leases).
    pub replica_id: String,
    /// How long a round lease lasts unless renewed (renewed every third of it).
    pub round_lease: Duration,
    /// The coordinator's data directory: the audit log's head file is kept there.
    pub data_dir: PathBuf,
    /// Store id → group, for metric queries by group.
    pub store_groups: std::collections::BTreeMap<String, String>,
}

/// How often a replica follows the change feed.
pub const FEED_EVERY: Duration = Duration::from_millis(200);

/// A round read once for the polls and uploads of one poll generation.
type RoundCell = Arc<tokio::sync::OnceCell<Arc<RoundRecord>>>;

/// What a poll found for a node.
#[derive(Debug)]
pub struct Polled {
    pub task: Option<TrainTask>,
    pub latest: u64,
    /// The version of the node's rollout channel.
    pub offered: u64,
    pub exports: Vec<backroom_proto::v1::FrameExportTask>,
}

/// A lineage's privacy position, for `backroom privacy <lineage>`.
#[derive(Clone, Debug)]
pub struct PrivacyState {
    pub lineage: String,
    pub budget: crate::ledger::Budget,
    pub epsilon_spent: Option<f64>,
    pub rdp_epsilon: Option<f64>,
    pub pld_epsilon: Option<f64>,
    pub rounds_charged: u32,
    pub rounds_remaining: Option<u64>,
    pub ledger: Vec<crate::ledger::LedgerEntry>,
}

/// Shared state of one coordinator process.
#[derive(Debug)]
pub struct Core {
    pub store: Store,
    pub registry: Registry,
    pub settings: Settings,
    changes: watch::Sender<u64>,
    /// Bumped by [`Core::notify`] only: what can change a long poll's answer.
    poll_changes: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
    /// Which node presence reports must be written ([`crate::presence`]).
    presence: Presence,
    /// Accepted updates' rows, committed in groups ([`crate::group_commit`]).
    update_commits: Arc<UpdateCommits>,
    /// What long polls answer, read once per poll generation ([`crate::poll_view`]).
    poll_views: PollViews,
    /// The round last read for polls and uploads, with the poll generation it was read in.
    generation_round: std::sync::Mutex<Option<(u64, String, RoundCell)>>,
    /// Rounds a driver of this process runs (at most one driver per round and process).
    driving: std::sync::Mutex<std::collections::HashSet<String>>,
    /// A change this process made that other replicas have not been told of yet.
    feed_dirty: std::sync::atomic::AtomicBool,
    /// The change feed's generation this process has acted on.
    feed_seen: std::sync::atomic::AtomicI64,
    /// Prometheus counters and gauges ([`crate::telemetry`]).
    pub telemetry: crate::telemetry::Telemetry,
    /// Who did what ([`crate::audit`]); append through [`Core::audit`].
    pub(crate) audit_log: crate::audit::AuditLog,
}

impl Core {
    pub fn new(
        store: Store,
        registry: Registry,
        settings: Settings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            presence: Presence::new(settings.online_window),
            update_commits: UpdateCommits::new(store.clone()),
            poll_views: PollViews::default(),
            generation_round: std::sync::Mutex::new(None),
            driving: std::sync::Mutex::default(),
            feed_dirty: std::sync::atomic::AtomicBool::new(false),
            feed_seen: std::sync::atomic::AtomicI64::new(0),
            telemetry: crate::telemetry::Telemetry::default(),
            audit_log: crate::audit::AuditLog::new(store.clone(), settings.data_dir.clone()),
            store,
            registry,
            settings,
            changes: watch::channel(0).0,
            poll_changes: watch::channel(0).0,
            shutdown,
        }
    }

    /// Wakes every long poll, round watcher and round driver, here and (through the change
    /// feed, within [`FEED_EVERY`]) in the other replicas sharing the database.
    pub fn notify(&self) {
        self.notify_local();
        self.feed_dirty
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn notify_local(&self) {
        self.changes.send_modify(|generation| *generation += 1);
        self.poll_changes.send_modify(|generation| *generation += 1);
    }

    /// Follows the change feed until shutdown: tells the other replicas of this process's
    /// changes, and wakes this process's polls and watchers for theirs.
    pub async fn run_change_feed(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        match self.store.change_feed().await {
            Ok(generation) => self.feed_seen.store(generation, Ordering::Release),
            Err(error) => warn!(%error, "cannot read the change feed"),
        }
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(FEED_EVERY) => {}
            }
            let seen = self.feed_seen.load(Ordering::Acquire);
            let read = if self.feed_dirty.swap(false, Ordering::AcqRel) {
                match self.store.bump_change_feed().await {
                    // Our own change is one; any more were another replica's.
                    Ok(generation) => Ok((generation, generation > seen + 1)),
                    Err(error) => {
                        self.feed_dirty.store(true, Ordering::Release);
                        Err(error)
                    }
                }
            } else {
                self.store
                    .change_feed()
                    .await
                    .map(|generation| (generation, generation > seen))
            };
            match read {
                Ok((generation, others_changed)) => {
                    self.feed_seen.store(generation, Ordering::Release);
                    if others_changed {
                        self.notify_local();
                    }
                }
                Err(error) => warn!(%error, "cannot follow the change feed"),
            }
        }
    }

    /// Marks `round_id` as driven by this process; false if it already is.
    pub fn start_driving(&self, round_id: &str) -> bool {
        self.driving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(round_id.to_owned())
    }

    pub fn stop_driving(&self, round_id: &str) {
        self.driving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(round_id);
    }

    /// Wakes round watchers and drivers but not long polls: for an update accepted or refused,
    /// which changes no node's task, offered version or exports. (With a thousand nodes
    /// polling, waking them all for each of a thousand updates would be a million answers
    /// recomputed per round.)
    pub fn notify_round_progress(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Changes of every kind (round drivers and watchers).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Changes that can alter a long poll's answer.
    pub fn subscribe_polls(&self) -> watch::Receiver<u64> {
        self.poll_changes.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps for `timeout` or until shutdown; returns whether shutdown came.
    pub async fn wait_shutdown(&self, timeout: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => true,
            () = tokio::time::sleep(timeout) => self.is_shutting_down(),
        }
    }

    /// Waits for a change, the timeout, or shutdown, whichever comes first.
    pub async fn wait_for_change(&self, changes: &mut watch::Receiver<u64>, timeout: Duration) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(timeout) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    // ---- channels ----

    /// Points `stable` (`canary_percent = None`) or `canary` at a version and wakes polling
    /// nodes.
    pub async fn promote(
        &self,
        lineage: &str,
        version: u64,
        canary_percent: Option<u32>,
        by: &str,
    ) -> Result<crate::store::Channels> {
        let channels = self
            .store
            .promote(lineage, version, canary_percent, by, now_unix_ms())
            .await?;
        tracing::info!(
            lineage,
            version,
            ?canary_percent,
            by,
            "promoted model version"
        );
        self.notify();
        Ok(channels)
    }

    /// Publishes version latest+1 carrying `to_version`'s weights (re-checked against their
    /// recorded hash) and points stable at it.
    pub async fn rollback(
        &self,
        lineage: &str,
        to_version: u64,
        by: &str,
    ) -> Result<crate::store::VersionRow> {
        let target = self
            .store
            .version(lineage, to_version)
            .await?
            .ok_or_else(|| {
                CoordinatorError::NotFound(format!(
                    "lineage {lineage:?} has no version {to_version}"
                ))
            })?;
        let latest = self.store.latest_version(lineage).await?.ok_or_else(|| {
            CoordinatorError::NotFound(format!("lineage {lineage:?} has no versions"))
        })?;
        // `to_version == latest` is allowed: it re-signs the newest weights with the active key
        // (after `keys rotate --revoke-old`, versions signed by the revoked key stop
        // installing).
        let parse = |row: &crate::store::VersionRow| {
            backroom_models::manifest::Manifest::from_bytes(&row.manifest)
                .map_err(|e| CoordinatorError::Internal(format!("stored manifest: {e}")))
        };
        let (old, newest) = (parse(&target)?, parse(&latest)?);
        let provenance = crate::registry::Provenance {
            round_id: String::new(),
            parent_version: latest.version,
            dp: old.dp,
            // The lineage's spend does not go back with the weights.
            epsilon_spent: newest.epsilon_spent,
            delta: newest.delta,
            rollback_of: Some(to_version),
        };
        let registry = self.registry.clone();
        let lineage_owned = lineage.to_owned();
        let row = tokio::task::spawn_blocking(move || {
            let params = registry.load_params(&target)?;
            registry.write_version(&lineage_owned, latest.version + 1, &provenance, &params)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("rollback task failed: {e}")))??;
        self.store.publish_rollback(&row, by, now_unix_ms()).await?;
        tracing::info!(
            lineage,
            version = row.version,
            to_version,
            by,
            "published rollback version"
        );
        self.notify();
        Ok(row)
    }

    // ---- rounds ----

    pub async fn start_round(
        self: &Arc<Self>,
        lineage: &str,
        spec: RoundSpec,
        started_by: &str,
    ) -> Result<RoundRecord> {
        spec.validate()?;
        let base = self.store.latest_version(lineage).await?.ok_or_else(|| {
            CoordinatorError::NotFound(format!("lineage {lineage:?} has no published model"))
        })?;
        let budget = self.store.budget(lineage).await?.ok_or_else(|| {
            CoordinatorError::FailedPrecondition(format!(
                "lineage {lineage:?} has no privacy budget configured"
            ))
        })?;
        let mut spec = spec;
        if spec.adaptive_clipping.is_some()
            && let Some(clip_norm) = self.store.adaptive_clip_norm(lineage).await?
        {
            // The clip norm adapted by the last adaptive round replaces the requested start.
            spec.clip_norm = clip_norm as f32;
        }
        let now = now_unix_ms();
        let online_window =
            i64::try_from(self.settings.online_window.as_millis()).unwrap_or(i64::MAX);
        let online = self
            .store
            .online_nodes(lineage, now - online_window)
            .await?
            .len();
        let (sampling_rate, expected_clients) =
            crate::budget::sampling_plan(spec.target_clients, self.settings.overselect, online);
        let round = RoundRecord {
            round_id: new_round_id(),
            lineage: lineage.to_owned(),
            state: RoundState::Pending,
            spec,
            base_version: base.version,
            published_version: 0,
            failure_reason: String::new(),
            started_by: started_by.to_owned(),
            training_deadline_unix_ms: 0,
            updates_refused: 0,
            created_unix_ms: now,
            updated_unix_ms: now,
            sampled_nodes: Vec::new(),
            updates_accepted: 0,
            sampling_rate,
            expected_clients,
            epsilon_after: None,
            next_clip_norm: None,
        };
        let decision = self
            .store
            .admit_round(&round, move |history, next| {
                crate::budget::decide(&budget, &history, next)
            })
            .await?;
        let entry = match decision {
            Ok(entry) => entry,
            Err(refusal) => {
                let lineage = lineage.to_owned();
                let message = tokio::task::spawn_blocking(move || {
                    crate::budget::refusal_message(&lineage, &budget, &refusal)
                })
                .await
                .map_err(|e| CoordinatorError::Internal(format!("accounting task failed: {e}")))?;
                return Err(CoordinatorError::FailedPrecondition(message));
            }
        };
        info!(
            round_id = %round.round_id,
            sampling_rate,
            expected_clients,
            epsilon_after = entry.epsilon_after.unwrap_or(f64::INFINITY),
            "round admitted by the privacy budget"
        );
        let round = RoundRecord {
            epsilon_after: entry.epsilon_after,
            ..round
        };
        info!(round_id = %round.round_id, lineage, started_by, base_version = base.version, "round started");
        crate::driver::spawn(Arc::clone(self), round.round_id.clone());
        self.telemetry.rounds_started.inc();
        self.notify();
        Ok(round)
    }

    /// The lineage's budget, ledger and ε spent (with both accountant bounds), and how many
    /// more rounds fit at the settings of the last charged round.
    pub async fn privacy_state(&self, lineage: &str) -> Result<PrivacyState> {
        let budget = self.store.budget(lineage).await?.ok_or_else(|| {
            CoordinatorError::NotFound(format!(
                "lineage {lineage:?} has no privacy budget (unknown lineage?)"
            ))
        })?;
        let ledger = self.store.ledger(lineage).await?;
        let history = crate::ledger::charged_events(&ledger);
        let last = ledger
            .iter()
            .rev()
            .find(|e| e.status.is_charged())
            .map(|e| e.event());
        let rounds_charged = history.iter().map(|e| e.rounds).sum::<u64>();
        let (report, remaining) = tokio::task::spawn_blocking(move || {
            let report = crate::privacy::compute_epsilon(&history, budget.delta);
            let remaining = match (budget.epsilon_max, last) {
                (Some(max), Some(next)) => {
                    crate::privacy::rounds_remaining(&history, next, max, budget.delta).ok()
                }
                _ => None,
            };
            (report, remaining)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("accounting task failed: {e}")))?;
        let report =
            report.map_err(|e| CoordinatorError::Internal(format!("privacy accounting: {e}")))?;
        let finite = |v: f64| v.is_finite().then_some(v);
        Ok(PrivacyState {
            lineage: lineage.to_owned(),
            budget,
            epsilon_spent: finite(report.epsilon),
            rdp_epsilon: finite(report.rdp_epsilon),
            pld_epsilon: report.pld_epsilon.and_then(finite),
            rounds_charged: u32::try_from(rounds_charged).unwrap_or(u32::MAX),
            rounds_remaining: remaining,
            ledger,
        })
    }

    pub async fn round(&self, round_id: &str) -> Result<RoundRecord> {
        self.store
            .round(round_id)
            .await?
            .ok_or_else(|| CoordinatorError::NotFound(format!("no round {round_id:?}")))
    }

    /// [`Store::round_progress`], or NOT_FOUND.
    pub async fn round_progress(&self, round_id: &str) -> Result<RoundProgress> {
        self.store
            .round_progress(round_id)
            .await?
            .ok_or_else(|| CoordinatorError::NotFound(format!("no round {round_id:?}")))
    }

    pub async fn cancel_round(&self, round_id: &str) -> Result<RoundRecord> {
        loop {
            let round = self.round(round_id).await?;
            if round.state.is_final() {
                return Err(CoordinatorError::FailedPrecondition(format!(
                    "round {round_id} is already {}",
                    round.state.as_str()
                )));
            }
            let moved = self
                .store
                .transition(
                    round_id,
                    round.state,
                    RoundState::Cancelled,
                    "cancelled by an administrator",
                    now_unix_ms(),
                )
                .await?;
            if moved {
                info!(round_id, "round cancelled");
                self.notify();
                return self.round(round_id).await;
            }
        }
    }

    // ---- nodes ----

    pub async fn node_seen(
        &self,
        node_id: &str,
        lineage: &str,
        installed_version: u64,
        backend: &str,
    ) -> Result<()> {
        let reported = Reported {
            lineage: Some(lineage.to_owned()),
            installed_version: Some(installed_version),
            backend: Some(backend.to_owned()),
        };
        self.note_presence(node_id, reported).await
    }

    /// Notes a poll's report (or, with `None`, only that the node is still there).
    async fn record_poll(
        &self,
        node_id: &str,
        lineage_and_version: Option<(&str, u64)>,
    ) -> Result<()> {
        let reported = Reported {
            lineage: lineage_and_version.map(|(lineage, _)| lineage.to_owned()),
            installed_version: lineage_and_version.map(|(_, version)| version),
            backend: None,
        };
        self.note_presence(node_id, reported).await
    }

    /// Queues a presence report for the flusher, or, for a node's first contact since this
    /// coordinator started, writes it before returning (so the node can be sampled at once).
    async fn note_presence(&self, node_id: &str, reported: Reported) -> Result<()> {
        let now = now_unix_ms();
        if self.presence.is_known(node_id) {
            self.presence.report(node_id, reported, now);
            return Ok(());
        }
        let first = crate::presence::Pending {
            reported: reported.clone(),
            seen_unix_ms: now,
        };
        self.store
            .record_presence(&[(node_id.to_owned(), first)])
            .await?;
        self.presence.written(node_id, &reported, now);
        Ok(())
    }

    /// Writes the node presence reports that are due, in one transaction ([`crate::presence`]).
    /// A failed write is logged; the nodes' next contacts report again.
    pub async fn flush_presence(&self) {
        let pending = self.presence.take_pending();
        if pending.is_empty() {
            return;
        }
        match self.store.record_presence(&pending).await {
            Ok(()) => {
                for (node_id, report) in &pending {
                    self.presence
                        .written(node_id, &report.reported, report.seen_unix_ms);
                }
            }
            Err(error) => warn!(nodes = pending.len(), %error, "cannot record node presence"),
        }
    }

    /// Flushes node presence every [`presence::FLUSH_EVERY`] until shutdown, then once more.
    pub async fn run_presence_flusher(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(crate::presence::FLUSH_EVERY) => {}
            }
            self.flush_presence().await;
        }
        self.flush_presence().await;
    }

    /// Long poll: returns a task or the latest version as soon as there is something new for this
    /// node, or after `wait`.
    pub async fn poll_task(
        &self,
        node_id: &str,
        lineage: &str,
        installed_version: u64,
        wait: Duration,
    ) -> Result<Polled> {
        let mut changes = self.subscribe_polls();
        let until = tokio::time::Instant::now() + wait;
        self.record_poll(node_id, Some((lineage, installed_version)))
            .await?;
        loop {
            let generation = *changes.borrow_and_update();
            self.record_poll(node_id, None).await?;
            let view = self.poll_view(generation, lineage).await?;
            let now_ms = now_unix_ms();
            let task = match view.pending_round(&self.poll_views, node_id, now_ms) {
                Some(round) => Some(self.task_of(&round.round_id).await?),
                None => None,
            };
            let latest = view.latest;
            let offered = view.channels.offered(lineage, node_id).unwrap_or(0);
            let exports: Vec<_> = view
                .exports_for(node_id, now_ms)
                .into_iter()
                .map(|row| self.export_task(row))
                .collect();
            let now = tokio::time::Instant::now();
            if task.is_some()
                || offered > installed_version
                || !exports.is_empty()
                || now >= until
                || self.is_shutting_down()
            {
                return Ok(Polled {
                    task,
                    latest,
                    offered,
                    exports,
                });
            }
            self.wait_for_change(&mut changes, until - now).await;
        }
    }

    /// Generation `generation`'s view of what polls of `lineage` answer: read from the
    /// database by the first poll that asks, shared with the others.
    async fn poll_view(&self, generation: u64, lineage: &str) -> Result<Arc<PollView>> {
        let cell = self.poll_views.cell(generation, lineage);
        let view = cell
            .get_or_try_init(|| async {
                let now_ms = now_unix_ms();
                let rounds = self.store.training_rounds_for_polls().await?;
                let latest = self
                    .store
                    .latest_version(lineage)
                    .await?
                    .map_or(0, |v| v.version);
                let channels = self.store.channels(lineage).await?;
                let mut exports: std::collections::HashMap<String, Vec<_>> =
                    std::collections::HashMap::new();
                for row in self.store.all_approved_frame_requests(now_ms).await? {
                    exports.entry(row.store_id.clone()).or_default().push(row);
                }
                self.poll_views.forget_finished(&rounds);
                Ok::<_, CoordinatorError>(Arc::new(PollView {
                    latest,
                    channels,
                    rounds,
                    exports,
                }))
            })
            .await?;
        Ok(Arc::clone(view))
    }

    /// The task of a training round (the same for every sampled store; the round is read once
    /// per poll generation however many polls ask at once).
    async fn task_of(&self, round_id: &str) -> Result<TrainTask> {
        let round = self.round_for_generation(round_id).await?;
        Ok(TrainTask {
            round_id: round.round_id.clone(),
            lineage: round.lineage.clone(),
            base_version: round.base_version,
            local_steps: round.spec.local_steps,
            batch_size: round.spec.batch_size,
            learning_rate: round.spec.learning_rate,
            clip_norm: round.spec.clip_norm,
            num_parameters: self.registry.num_parameters() as u64,
            deadline_unix_ms: round.training_deadline_unix_ms,
            noise_stddev: round.spec.node_noise_stddev(),
            report_within_clip: round.spec.adaptive_clipping.is_some(),
            proximal_mu: round.spec.proximal_mu,
        })
    }

    // ---- updates ----

    /// A round as read once per poll generation (every change of a round's state bumps it) by
    /// the first poll or upload that asks, shared with the others: ten thousand polls or
    /// uploads arriving together read a round of ten thousand participants once, not ten
    /// thousand times.
    async fn round_for_generation(&self, round_id: &str) -> Result<Arc<RoundRecord>> {
        let generation = *self.poll_changes.borrow();
        let cell = {
            let mut slot = self
                .generation_round
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                Some((g, id, cell)) if *g == generation && id == round_id => Arc::clone(cell),
                _ => {
                    let cell = RoundCell::default();
                    *slot = Some((generation, round_id.to_owned(), Arc::clone(&cell)));
                    cell
                }
            }
        };
        let round = cell
            .get_or_try_init(|| async {
                Ok::<_, CoordinatorError>(Arc::new(self.round(round_id).await?))
            })
            .await?;
        Ok(Arc::clone(round))
    }

    /// Checks an upload's header before any data is read. Returns the round.
    pub async fn check_upload_header(
        &self,
        node_id: &str,
        header: &UpdateHeader,
    ) -> Result<Arc<RoundRecord>> {
        let round = self.round_for_generation(&header.round_id).await?;
        // First, so a re-sent update is told it already arrived even if its arrival closed
        // the round. While the round trains, an update this process accepted is refused here
        // and one it did not see (before a restart, or another replica's) when its row is not
        // inserted.
        let already = if round.state == RoundState::Training {
            self.poll_views.was_uploaded(&round.round_id, node_id)
        } else {
            self.store.has_update(&round.round_id, node_id).await?
        };
        if already {
            return Err(CoordinatorError::AlreadyExists(format!(
                "node {node_id} already sent its update for round {}",
                round.round_id
            )));
        }
        if round.state != RoundState::Training {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "round {} is {}, not accepting updates",
                round.round_id,
                round.state.as_str()
            )));
        }
        if round
            .sampled_nodes
            .binary_search_by(|n| n.as_str().cmp(node_id))
            .is_err()
        {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "node {node_id} is not sampled in round {}",
                round.round_id
            )));
        }
        if now_unix_ms() >= round.training_deadline_unix_ms {
            return Err(CoordinatorError::DeadlineExceeded(format!(
                "round {} stopped accepting updates at its deadline",
                round.round_id
            )));
        }
        if header.base_version != round.base_version {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "update is on version {}, round {} trains version {}",
                header.base_version, round.round_id, round.base_version
            )));
        }
        let expected = self.registry.num_parameters() as u64;
        if header.num_parameters != expected {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update declares {} parameters, the model has {expected}",
                header.num_parameters
            )));
        }
        if header.num_parameters.saturating_mul(4) > self.settings.max_update_bytes {
            return Err(CoordinatorError::ResourceExhausted(format!(
                "update of {} bytes exceeds the limit of {} bytes",
                header.num_parameters.saturating_mul(4),
                self.settings.max_update_bytes
            )));
        }
        Ok(round)
    }

    /// Re-checks the norm, makes the update durable, and only then records it as accepted.
    pub async fn accept_update(
        &self,
        round: &RoundRecord,
        node_id: &str,
        delta: Vec<f32>,
        norm: f64,
        num_examples: u64,
        within_clip: bool,
    ) -> Result<u32> {
        Self::check_update_norm(round, delta.len(), norm)?;
        // Encoding and hashing off the runtime, then stored (durable, and content-addressed, so
        // a retry of the same bytes finds them there) before the row. Not one blocking call:
        // a thousand uploads holding blocking threads while the store's own file work waits
        // for one would exhaust the pool.
        let (bytes, digest) = tokio::task::spawn_blocking(move || {
            let bytes: Vec<u8> = delta.iter().flat_map(|v| v.to_le_bytes()).collect();
            let digest = backroom_models::manifest::sha256_hex(&bytes);
            (bytes, digest)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("update encoding task failed: {e}")))?;
        let reference = self.registry.blobs().put_hashed(bytes, &digest).await?;
        let inserted = self
            .update_commits
            .insert(UpdateRow {
                round_id: round.round_id.clone(),
                node_id: node_id.to_owned(),
                num_examples,
                within_clip,
                norm,
                sha256: digest,
                blob_path: reference,
                received_unix_ms: now_unix_ms(),
            })
            .await?;
        if !inserted {
            // The blob stays either way: blobs are shared by content, so another row may name
            // the same bytes.
            if !self.store.has_update(&round.round_id, node_id).await? {
                return Err(CoordinatorError::DeadlineExceeded(format!(
                    "round {} stopped accepting updates before this one was complete",
                    round.round_id
                )));
            }
            return Err(CoordinatorError::AlreadyExists(format!(
                "node {node_id} already sent its update for round {}",
                round.round_id
            )));
        }
        self.poll_views.mark_uploaded(&round.round_id, node_id);
        self.notify_round_progress();
        let accepted = self.round_progress(&round.round_id).await?.accepted;
        info!(round_id = %round.round_id, node_id, norm, accepted, "update accepted");
        Ok(accepted)
    }

    /// Refuses an update whose L2 norm is above what the round allows a clipped update.
    pub fn check_update_norm(round: &RoundRecord, num_values: usize, norm: f64) -> Result<()> {
        let limit = round.spec.max_upload_norm(num_values);
        if norm > limit {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update norm {norm:.6} exceeds the round's limit {limit} (clip norm {}, {} noise); \
                 clip before upload",
                round.spec.clip_norm,
                round.spec.noise_mode.as_str()
            )));
        }
        Ok(())
    }

    /// Records an update refused for its content, with the bytes received (the first
    /// [`QUARANTINE_BLOBS_PER_NODE_AND_ROUND`] per node and round), for forensics. Quarantined
    /// updates are never in `round_updates`, so no aggregation can read them. Best effort: a
    /// failure here is logged and never changes what the node is told.
    pub async fn quarantine_update(
        &self,
        round_id: &str,
        node_id: &str,
        reason: &str,
        received: Vec<u8>,
    ) {
        if let Err(error) = self
            .try_quarantine(round_id, node_id, reason, received)
            .await
        {
            warn!(round_id, node_id, %error, "could not quarantine a refused update");
        }
    }

    async fn try_quarantine(
        &self,
        round_id: &str,
        node_id: &str,
        reason: &str,
        received: Vec<u8>,
    ) -> Result<()> {
        let keep = self
            .store
            .count_quarantined_blobs(round_id, node_id)
            .await?
            < QUARANTINE_BLOBS_PER_NODE_AND_ROUND;
        let received_bytes = received.len() as u64;
        let (received, digest) = tokio::task::spawn_blocking(move || {
            let digest = backroom_models::manifest::sha256_hex(&received);
            (received, digest)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("quarantine hashing task failed: {e}")))?;
        let blob_path = if keep {
            Some(self.registry.blobs().put_hashed(received, &digest).await?)
        } else {
            None
        };
        self.store
            .insert_quarantined(&QuarantineRow {
                round_id: round_id.to_owned(),
                node_id: node_id.to_owned(),
                reason: reason.to_owned(),
                received_bytes,
                sha256: digest.clone(),
                blob_path,
                received_unix_ms: now_unix_ms(),
            })
            .await?;
        warn!(round_id, node_id, received_bytes, sha256 = %digest, "refused update quarantined");
        Ok(())
    }

    pub async fn refuse_update(&self, round_id: &str, node_id: &str, reason: &str) {
        warn!(round_id, node_id, reason, "update refused");
        if let Err(error) = self.store.count_refused(round_id).await {
            warn!(round_id, %error, "could not count a refused update");
        }
        self.notify_round_progress();
    }
}

fn new_round_id() -> String {
    let bytes: [u8; 8] = rand::random();
    format!("r-{}-{}", now_unix_ms(), hex::encode(bytes))
}
