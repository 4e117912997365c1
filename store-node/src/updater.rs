//! Model updates: the long-poll loop, the chunked download (bounded, checked as it streams), and
//! verify-then-swap installation.
//!
//! **Architecture Invariant:** the live model changes only through [`Updater::install_version`],
//! after [`ModelStore::verify`](crate::model_store::ModelStore::verify) passed and the files are
//! durable on disk; inference reads an `Arc` snapshot and never sees a half-installed model.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_models::ARCHITECTURE_ID;
use backroom_models::manifest::Expectations;
use backroom_models::verify::{ReleaseParts, Trust, check_header};
use backroom_proto::v1::{DownloadModelRequest, PollTaskRequest};
use tracing::{debug, info, warn};

use crate::model_store::{InstalledModel, ModelRefusal, ModelStoreError};
use crate::model_stream::{ChunkKind, ModelAssembler};
use crate::transport::{Backoff, RPC_TIMEOUT, Shutdown, request, sleep_or_shutdown};
use crate::{NodeContext, now_unix_ms, trainer};

/// How long a refused version is left alone before it is offered another chance.
pub const REFUSED_VERSION_COOLDOWN: Duration = Duration::from_secs(600);
/// Longest silence tolerated between two chunks of a download.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
/// Round ids remembered as handled, so a task is not trained twice.
const REMEMBERED_ROUNDS: usize = 256;

/// Result of trying to get one version installed.
#[derive(Debug)]
pub enum InstallOutcome {
    Installed(Arc<InstalledModel>),
    /// Refused for a reason that retrying will not fix; logged and counted.
    Refused,
    /// The coordinator could not be reached or the stream broke; worth retrying later.
    Unavailable,
    Shutdown,
}

enum DownloadFailure {
    Refused(String),
    Unavailable(String),
    Shutdown,
}

/// The poll loop's state: what was refused and which rounds were handled.
pub(crate) struct Updater {
    ctx: Arc<NodeContext>,
    refused: HashMap<u64, Instant>,
    handled_rounds: VecDeque<String>,
    handled_set: HashSet<String>,
    /// Frame requests delivered or refused by this run.
    handled_exports: HashSet<String>,
}

impl Updater {
    pub(crate) fn new(ctx: Arc<NodeContext>) -> Self {
        Self {
            ctx,
            refused: HashMap::new(),
            handled_rounds: VecDeque::new(),
            handled_set: HashSet::new(),
            handled_exports: HashSet::new(),
        }
    }

    fn may_try(&self, version: u64) -> bool {
        self.refused
            .get(&version)
            .is_none_or(|at| at.elapsed() >= REFUSED_VERSION_COOLDOWN)
    }

    /// Records a round as handled; `false` if it already was.
    fn claim_round(&mut self, round_id: &str) -> bool {
        if !self.handled_set.insert(round_id.to_owned()) {
            return false;
        }
        self.handled_rounds.push_back(round_id.to_owned());
        if self.handled_rounds.len() > REMEMBERED_ROUNDS
            && let Some(oldest) = self.handled_rounds.pop_front()
        {
            self.handled_set.remove(&oldest);
        }
        true
    }

    /// Downloads, verifies, writes and swaps in `version`.
    pub(crate) async fn install_version(
        &mut self,
        version: u64,
        shutdown: &mut Shutdown,
    ) -> InstallOutcome {
        if !self.may_try(version) {
            debug!(version, "version was refused recently; not retrying yet");
            return InstallOutcome::Refused;
        }
        // Never below the durable floor: a crash part-way through an install must not open the
        // door to an older signed version.
        let installed = self
            .ctx
            .installed_version()
            .max(self.ctx.model_store.rollback_floor());
        match self.download_and_verify(version, installed, shutdown).await {
            Ok(model) => {
                info!(
                    version = model.version(),
                    previous_version = installed,
                    round_id = %model.manifest.round_id,
                    "installed model version"
                );
                let model = Arc::new(model);
                self.ctx.model.send_replace(Some(model.clone()));
                self.ctx
                    .update_status(|s| s.installed_version = model.version());
                InstallOutcome::Installed(model)
            }
            Err(DownloadFailure::Refused(reason)) => {
                warn!(
                    version,
                    installed_version = installed,
                    "refused model version {version}: {reason}"
                );
                self.refused.insert(version, Instant::now());
                self.ctx.update_status(|s| {
                    s.refused_models += 1;
                    s.last_error = Some(format!("refused model version {version}: {reason}"));
                });
                InstallOutcome::Refused
            }
            Err(DownloadFailure::Unavailable(reason)) => {
                warn!(
                    version,
                    "could not download model version {version}: {reason}"
                );
                self.ctx
                    .set_error(format!("download of version {version} failed: {reason}"));
                InstallOutcome::Unavailable
            }
            Err(DownloadFailure::Shutdown) => InstallOutcome::Shutdown,
        }
    }

    async fn download_and_verify(
        &self,
        version: u64,
        installed: u64,
        shutdown: &mut Shutdown,
    ) -> Result<InstalledModel, DownloadFailure> {
        let ctx = &self.ctx;
        let mut client = ctx.client.clone();
        let message = DownloadModelRequest {
            lineage: ctx.config.lineage.clone(),
            version,
        };
        let mut stream = tokio::select! {
            _ = shutdown.triggered() => return Err(DownloadFailure::Shutdown),
            // No deadline on the whole stream (a large model takes a while); each chunk has one.
            r = client.download_model(tonic::Request::new(message)) => r
                .map_err(|s| DownloadFailure::Unavailable(crate::describe_status(&s)))?
                .into_inner(),
        };
        let mut assembler = ModelAssembler::new(ctx.config.max_model_bytes);
        loop {
            let next = tokio::select! {
                _ = shutdown.triggered() => return Err(DownloadFailure::Shutdown),
                n = tokio::time::timeout(CHUNK_TIMEOUT, stream.message()) => n,
            };
            let chunk = match next {
                Err(_) => return Err(DownloadFailure::Unavailable("stream stalled".to_owned())),
                Ok(Err(status)) => {
                    return Err(DownloadFailure::Unavailable(crate::describe_status(
                        &status,
                    )));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            let kind = assembler
                .push(chunk)
                .map_err(|e| DownloadFailure::Refused(e.to_string()))?;
            if kind == ChunkKind::Header
                && let Some(header) = assembler.header()
            {
                // Check the key set, the signature and the fields before spending bandwidth on
                // the weights, and refuse a stream announcing more (or less) than the manifest.
                let store = ctx.model_store.clone();
                let parts = (
                    header.manifest.clone(),
                    header.signature.clone(),
                    header.key_set.clone(),
                    header.key_set_signature.clone(),
                    header.weights_size,
                );
                let lineage = ctx.config.lineage.clone();
                let now = now_unix_ms();
                let checked = tokio::task::spawn_blocking(move || {
                    let held = store.held_key_set();
                    let expect = Expectations {
                        lineage: &lineage,
                        architecture: ARCHITECTURE_ID,
                        installed_version: installed,
                        now_unix_ms: now,
                    };
                    let trust = Trust {
                        root: store.root_key(),
                        held: held.as_ref(),
                    };
                    let release = ReleaseParts {
                        manifest: &parts.0,
                        signature: &parts.1,
                        key_set: &parts.2,
                        key_set_signature: &parts.3,
                    };
                    let checked = check_header(trust, release, Some(parts.4), &expect);
                    // A newer key set is kept even when the version is refused: a revocation
                    // must hold from the moment the node has seen it.
                    let key_set = match &checked {
                        Ok(header) if header.key_set.is_new => Some(header.key_set.signed.clone()),
                        Err(_) => backroom_models::keys::resolve_key_set(
                            store.root_key(),
                            held.as_ref(),
                            &parts.2,
                            &parts.3,
                            now,
                        )
                        .ok()
                        .filter(|r| r.is_new)
                        .map(|r| r.signed),
                        Ok(_) => None,
                    };
                    if let Some(set) = key_set
                        && let Err(e) = store.accept_key_set(&set)
                    {
                        warn!("cannot keep the newer key set: {e}");
                    }
                    checked.map(|h| h.manifest.version)
                })
                .await
                .map_err(|e| DownloadFailure::Unavailable(format!("header check failed: {e}")))?
                .map_err(|e| DownloadFailure::Refused(e.to_string()))?;
                if checked != version {
                    let wrong = ModelRefusal::WrongVersion {
                        requested: version,
                        received: checked,
                    };
                    return Err(DownloadFailure::Refused(wrong.to_string()));
                }
            }
        }
        let downloaded = assembler
            .finish()
            .map_err(|e| DownloadFailure::Refused(e.to_string()))?;
        let store = ctx.model_store.clone();
        let now = now_unix_ms();
        let job = tokio::task::spawn_blocking(move || {
            let verified = store
                .verify(downloaded, installed, Some(now))
                .map_err(|e| DownloadFailure::Refused(e.to_string()))?;
            debug!(version, signed_by = %verified.signed_by, "model version verified");
            if verified.model.version() != version {
                let wrong = ModelRefusal::WrongVersion {
                    requested: version,
                    received: verified.model.version(),
                };
                return Err(DownloadFailure::Refused(wrong.to_string()));
            }
            store.install(verified).map_err(|e| match e {
                ModelStoreError::Refused { reason, .. } => {
                    DownloadFailure::Refused(reason.to_string())
                }
                io => DownloadFailure::Unavailable(format!("cannot write model files: {io}")),
            })
        });
        match job.await {
            Ok(result) => result,
            Err(join) => Err(DownloadFailure::Unavailable(format!(
                "verification task failed: {join}"
            ))),
        }
    }
}

/// The long-poll loop: installs newer versions and runs training tasks, until shutdown.
pub(crate) async fn run_updater(
    ctx: Arc<NodeContext>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut updater = Updater::new(ctx.clone());
    let mut backoff = Backoff::for_coordinator();
    let wait_secs = ctx.config.poll_wait_secs;
    let mut key_set_version = held_key_set_version(&ctx).await;
    loop {
        let started = Instant::now();
        let message = PollTaskRequest {
            lineage: ctx.config.lineage.clone(),
            installed_version: ctx.installed_version(),
            wait_secs,
            key_set_version,
        };
        let mut client = ctx.client.clone();
        let timeout = RPC_TIMEOUT + Duration::from_secs(wait_secs.into());
        let polled = tokio::select! {
            _ = shutdown.triggered() => return Ok(()),
            r = client.poll_task(request(message, timeout)) => r,
        };
        let response = match polled {
            Ok(response) => {
                backoff.reset();
                response.into_inner()
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(
                    attempt = backoff.attempt(),
                    delay_ms = delay.as_millis() as u64,
                    "poll for tasks failed: {}",
                    crate::describe_status(&status)
                );
                ctx.set_error(format!("poll failed: {}", crate::describe_status(&status)));
                if sleep_or_shutdown(delay, &mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };

        if !response.key_set.is_empty() {
            take_key_set(&ctx, response.key_set, response.key_set_signature).await;
            key_set_version = held_key_set_version(&ctx).await;
        }
        let mut acted = false;
        let mut unavailable = false;
        // The task first: installing the newest version before it could make the task's base
        // version unreachable.
        if let Some(task) = response.task
            && updater.claim_round(&task.round_id)
        {
            acted = true;
            trainer::run_task(&ctx, &mut updater, task, &mut shutdown).await;
        }
        if shutdown.is_triggered() {
            return Ok(());
        }
        if !response.frame_exports.is_empty()
            && crate::frame_export::run_exports(
                &ctx,
                &mut updater.handled_exports,
                response.frame_exports,
            )
            .await
        {
            acted = true;
        }
        // The version of this node's rollout channel (stable, or a canary it falls in).
        let offered = response.offered_version;
        if offered > ctx.installed_version() && updater.may_try(offered) {
            let outcome = updater.install_version(offered, &mut shutdown).await;
            // A download may have brought a newer key set, installed or not.
            key_set_version = held_key_set_version(&ctx).await;
            match outcome {
                InstallOutcome::Installed(_) => acted = true,
                InstallOutcome::Refused => {}
                InstallOutcome::Unavailable => unavailable = true,
                InstallOutcome::Shutdown => return Ok(()),
            }
        }

        // Pacing: a poll that returned early with nothing this node can act on (a refused
        // version, an already-handled round) must not turn into a tight loop.
        let pause = if unavailable {
            backoff.next_delay()
        } else if acted {
            Duration::ZERO
        } else {
            Duration::from_secs(wait_secs.into()).saturating_sub(started.elapsed())
        };
        if !pause.is_zero() && sleep_or_shutdown(pause, &mut shutdown).await {
            return Ok(());
        }
    }
}

/// Version of the key set this node holds (0: none yet).
async fn held_key_set_version(ctx: &NodeContext) -> u64 {
    let store = ctx.model_store.clone();
    tokio::task::spawn_blocking(move || store.held_key_set().map_or(0, |k| k.set.version))
        .await
        .unwrap_or(0)
}

/// Keeps a key set the coordinator sent with a poll if it verifies against the root and is
/// newer than the held one; a forged, expired, conflicting or older one changes nothing.
async fn take_key_set(ctx: &NodeContext, bytes: Vec<u8>, signature: Vec<u8>) {
    let store = ctx.model_store.clone();
    let now = now_unix_ms();
    let taken = tokio::task::spawn_blocking(move || {
        let held = store.held_key_set();
        let resolved = backroom_models::keys::resolve_key_set(
            store.root_key(),
            held.as_ref(),
            &bytes,
            &signature,
            now,
        )
        .map_err(|e| e.to_string())?;
        if resolved.is_new {
            store
                .accept_key_set(&resolved.signed)
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(resolved.is_new.then_some(resolved.signed.set.version))
    })
    .await;
    match taken {
        Ok(Ok(Some(version))) => info!(key_set_version = version, "accepted a newer key set"),
        Ok(Ok(None)) => {}
        Ok(Err(reason)) => {
            warn!("key set from the coordinator refused: {reason}");
            ctx.set_error(format!("key set refused: {reason}"));
        }
        Err(join) => warn!("key set task failed: {join}"),
    }
}
