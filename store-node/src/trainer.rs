//! Local fine-tuning for a round: train from the base version on the node's labelled samples,
//! take delta = fine-tuned − base, clip it to L2 norm ≤ C, and upload it in chunks.
//!
//! **Architecture Invariant:** only a clipped, finite delta leaves the node; never the weights or
//! the samples.

use std::sync::Arc;
use std::time::Duration;

use backroom_models::{TrainSettings, train_local};
use backroom_proto::MAX_CHUNK_BYTES;
use backroom_proto::v1::update_chunk::Kind;
use backroom_proto::v1::{TrainTask, UpdateChunk, UpdateHeader, UpdateTrailer};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::transport::{Backoff, RPC_TIMEOUT, Shutdown, request, sleep_or_shutdown};
use crate::updater::{InstallOutcome, Updater};
use crate::{NodeContext, now_unix_ms};

/// Upload attempts for transient failures (before the deadline).
const UPLOAD_ATTEMPTS: u32 = 5;

/// Why a delta could not be clipped (or noised, see [`crate::dp`]).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClipError {
    #[error("clip norm must be finite and positive, got {0}")]
    InvalidClipNorm(f32),
    #[error("delta holds a non-finite value at index {index}")]
    NonFinite { index: usize },
    #[error("delta norm {norm} is still above the clip norm {clip_norm} after clipping")]
    StillAboveClip { norm: f64, clip_norm: f32 },
    #[error("noise standard deviation must be finite, non-negative and at most 1e30, got {0}")]
    InvalidNoiseStd(f64),
}

/// What clipping did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipOutcome {
    pub norm_before: f64,
    pub norm_after: f64,
    /// 1.0 when the delta was already within the clip norm.
    pub scale: f64,
}

/// Why a round's training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training failed: {0}")]
    Model(String),
    #[error("fine-tuned model has {fine} parameters, base has {base}")]
    ShapeMismatch { fine: usize, base: usize },
    #[error(transparent)]
    Clip(#[from] ClipError),
}

/// Independent f64 accumulators in the norm loops: they let the compiler keep several SIMD
/// lanes busy (one running sum would serialise every addition).
const LANES: usize = 8;

/// L2 norm in f64 (the coordinator re-checks with the same arithmetic).
pub use backroom_models::params::l2_norm;

/// Multiplies every value by `scale` (rounded once to f32) and returns the L2 norm of the
/// result, in one pass.
fn scale_in_place(values: &mut [f32], scale: f64) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let mut chunks = values.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *value = (f64::from(*value) * scale) as f32;
            let v = f64::from(*value);
            *lane += v * v;
        }
    }
    let mut tail = 0.0;
    for value in chunks.into_remainder() {
        *value = (f64::from(*value) * scale) as f32;
        tail += f64::from(*value) * f64::from(*value);
    }
    (lanes.iter().sum::<f64>() + tail).sqrt()
}

/// Scales `delta` by `min(1, C/‖delta‖)` (with a tiny margin so f32 rounding cannot push the
/// result above C). Refuses non-finite values and a non-positive or non-finite C; on an error
/// other than [`ClipError::StillAboveClip`] the delta is unchanged.
pub fn clip_l2(delta: &mut [f32], clip_norm: f32) -> Result<ClipOutcome, ClipError> {
    if !(clip_norm.is_finite() && clip_norm > 0.0) {
        return Err(ClipError::InvalidClipNorm(clip_norm));
    }
    let limit = f64::from(clip_norm);
    // One pass for both checks: the norm is finite exactly when every value is.
    let norm_before = l2_norm(delta);
    if !norm_before.is_finite() {
        let index = delta.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(ClipError::NonFinite { index });
    }
    if norm_before <= limit {
        return Ok(ClipOutcome {
            norm_before,
            norm_after: norm_before,
            scale: 1.0,
        });
    }
    let mut scale_total = 1.0;
    let mut norm = norm_before;
    // One pass almost always suffices; the loop guards against rounding in the f32 cast.
    for _ in 0..4 {
        if norm <= limit {
            break;
        }
        let scale = limit / norm * (1.0 - 1e-6);
        norm = scale_in_place(delta, scale);
        scale_total *= scale;
    }
    if norm > limit {
        return Err(ClipError::StillAboveClip { norm, clip_norm });
    }
    Ok(ClipOutcome {
        norm_before,
        norm_after: norm,
        scale: scale_total,
    })
}

/// delta = fine-tuned − base.
pub fn weight_delta(fine_tuned: &[f32], base: &[f32]) -> Result<Vec<f32>, TrainError> {
    if fine_tuned.len() != base.len() {
        return Err(TrainError::ShapeMismatch {
            fine: fine_tuned.len(),
            base: base.len(),
        });
    }
    Ok(fine_tuned.iter().zip(base).map(|(f, b)| f - b).collect())
}

/// The local training seed: a hash of the round and the store, so each store draws its own
/// batches and a retried round draws the same ones.
pub fn training_seed(round_id: &str, node_id: &str, store_index: u32) -> u64 {
    let digest = Sha256::new()
        .chain_update(round_id.as_bytes())
        .chain_update([0u8])
        .chain_update(node_id.as_bytes())
        .chain_update([0u8])
        .chain_update(store_index.to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Little-endian f32 bytes of the delta and their SHA-256.
pub fn encode_delta(delta: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let bytes: Vec<u8> = delta.iter().flat_map(|v| v.to_le_bytes()).collect();
    let sha = Sha256::digest(&bytes).to_vec();
    (bytes, sha)
}

/// The upload stream: header, data chunks of at most [`MAX_CHUNK_BYTES`], trailer.
pub fn update_chunks(
    header: UpdateHeader,
    data: Arc<Vec<u8>>,
    sha256: Vec<u8>,
) -> impl Iterator<Item = UpdateChunk> + Send + 'static {
    let n_chunks = data.len().div_ceil(MAX_CHUNK_BYTES);
    let head = std::iter::once(UpdateChunk {
        kind: Some(Kind::Header(header)),
    });
    let body = (0..n_chunks).map(move |i| {
        let start = i * MAX_CHUNK_BYTES;
        let end = (start + MAX_CHUNK_BYTES).min(data.len());
        UpdateChunk {
            kind: Some(Kind::Data(data[start..end].to_vec())),
        }
    });
    let tail = std::iter::once(UpdateChunk {
        kind: Some(Kind::Trailer(UpdateTrailer { sha256 })),
    });
    head.chain(body).chain(tail)
}

/// A delta ready to leave the node: trained, clipped, noised (distributed mode).
#[derive(Clone, Debug)]
pub struct LocalUpdate {
    /// Clipped (and, with `noise_stddev > 0`, noised) fine-tuned − base.
    pub delta: Vec<f32>,
    /// What clipping did, before noise.
    pub clip: ClipOutcome,
    /// Mean minibatch loss of local training.
    pub mean_loss: f32,
    /// Examples seen in training (steps × batch).
    pub num_examples: u64,
}

/// The node's whole local step for one round, on a blocking thread: train from `base` on the
/// samples, take delta = fine-tuned − base, clip it to L2 norm ≤ `clip_norm`, then add
/// N(0, `noise_stddev`²) per coordinate (the distributed-noise share; 0 in central mode).
/// `backroom bench-fl` runs exactly this for its simulated stores.
#[allow(clippy::too_many_arguments)]
pub fn local_update(
    device: &backroom_models::ComputeDevice,
    config: &backroom_models::ShelfNetConfig,
    base: &[f32],
    images: &[f32],
    labels: &[u8],
    settings: &TrainSettings,
    clip_norm: f32,
    noise_stddev: f64,
) -> Result<LocalUpdate, TrainError> {
    let outcome = train_local(device, config, base, images, labels, settings)
        .map_err(|e| TrainError::Model(e.to_string()))?;
    let mut delta = weight_delta(&outcome.params, base)?;
    // Clip first, then noise: the noise is calibrated to the clipped sensitivity.
    let clip = crate::dp::clip_and_noise(
        &mut delta,
        clip_norm,
        noise_stddev,
        &mut crate::dp::os_rng(),
    )?;
    Ok(LocalUpdate {
        delta,
        clip,
        mean_loss: outcome.mean_loss,
        num_examples: outcome.examples_seen as u64,
    })
}

struct PreparedUpdate {
    data: Arc<Vec<u8>>,
    sha256: Vec<u8>,
    clip: ClipOutcome,
    mean_loss: f32,
    num_examples: u64,
}

/// Handles one training task end to end; every failure is logged and the node carries on.
pub(crate) async fn run_task(
    ctx: &Arc<NodeContext>,
    updater: &mut Updater,
    task: TrainTask,
    shutdown: &mut Shutdown,
) {
    let round_id = task.round_id.clone();
    if task.lineage != ctx.config.lineage {
        warn!(%round_id, lineage = %task.lineage, "skipping task for another lineage");
        return;
    }
    if now_unix_ms() >= task.deadline_unix_ms {
        warn!(%round_id, "skipping task: its deadline passed before training started");
        return;
    }
    let installed = ctx.installed_version();
    let base = if installed == task.base_version {
        ctx.installed_model()
    } else if installed < task.base_version {
        match updater.install_version(task.base_version, shutdown).await {
            InstallOutcome::Installed(model) => Some(model),
            InstallOutcome::Shutdown => return,
            InstallOutcome::Refused | InstallOutcome::Unavailable => None,
        }
    } else {
        None
    };
    let Some(base) = base.filter(|m| m.version() == task.base_version) else {
        warn!(
            %round_id,
            base_version = task.base_version,
            installed_version = ctx.installed_version(),
            "skipping task: its base version is not installed and cannot be obtained"
        );
        return;
    };
    if base.params.len() as u64 != task.num_parameters {
        warn!(
            %round_id,
            task_parameters = task.num_parameters,
            model_parameters = base.params.len(),
            "skipping task: parameter count differs from the installed model"
        );
        return;
    }

    info!(%round_id, base_version = task.base_version, steps = task.local_steps, "training started");
    let settings = TrainSettings {
        steps: task.local_steps as usize,
        batch_size: (task.batch_size as usize).max(1),
        learning_rate: f64::from(task.learning_rate),
        seed: training_seed(&round_id, &ctx.node_id(), ctx.config.data.store_index),
        proximal_mu: f64::from(task.proximal_mu),
    };
    let clip_norm = task.clip_norm;
    // Distributed DP: this node's share of the round's Gaussian noise (0 in central mode).
    let noise_stddev = task.noise_stddev;
    let device = ctx.device.clone();
    let samples = ctx.train_data.clone();
    let job = tokio::task::spawn_blocking(move || -> Result<PreparedUpdate, TrainError> {
        let update = local_update(
            &device,
            &base.config,
            &base.params,
            &samples.images,
            &samples.labels,
            &settings,
            clip_norm,
            noise_stddev,
        )?;
        let (data, sha256) = encode_delta(&update.delta);
        Ok(PreparedUpdate {
            data: Arc::new(data),
            sha256,
            clip: update.clip,
            mean_loss: update.mean_loss,
            num_examples: update.num_examples,
        })
    });
    let prepared = tokio::select! {
        _ = shutdown.triggered() => {
            info!(%round_id, "shutdown during training; the update is not sent");
            return;
        }
        joined = job => joined,
    };
    let prepared = match prepared {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(error)) => {
            warn!(%round_id, "local training failed: {error}");
            ctx.set_error(format!("round {round_id}: {error}"));
            return;
        }
        Err(join) => {
            warn!(%round_id, "training task failed: {join}");
            ctx.set_error(format!("round {round_id}: training task failed: {join}"));
            return;
        }
    };
    info!(
        %round_id,
        mean_loss = prepared.mean_loss,
        examples = prepared.num_examples,
        norm_before = prepared.clip.norm_before,
        norm_after = prepared.clip.norm_after,
        clip_norm,
        "training finished"
    );
    ctx.update_status(|s| {
        s.last_round_id = round_id.clone();
        s.last_train_loss = Some(prepared.mean_loss);
    });
    upload(ctx, &task, prepared, shutdown).await;
}

async fn upload(
    ctx: &Arc<NodeContext>,
    task: &TrainTask,
    prepared: PreparedUpdate,
    shutdown: &mut Shutdown,
) {
    let round_id = &task.round_id;
    let mut backoff = Backoff::for_coordinator();
    for attempt in 1..=UPLOAD_ATTEMPTS {
        let left_ms = task.deadline_unix_ms - now_unix_ms();
        if left_ms <= 0 {
            warn!(%round_id, "deadline passed before the update could be sent; skipping upload");
            return;
        }
        let header = UpdateHeader {
            round_id: round_id.clone(),
            base_version: task.base_version,
            num_parameters: task.num_parameters,
            num_examples: prepared.num_examples,
            // Adaptive clipping's bit (was the delta within C before clipping?), sent only
            // when the round adapts its clip norm; otherwise the field stays unset.
            within_clip_norm: task.report_within_clip
                && prepared.clip.norm_before <= f64::from(task.clip_norm),
        };
        let chunks = update_chunks(header, prepared.data.clone(), prepared.sha256.clone());
        // After the deadline the coordinator refuses the update anyway.
        let timeout = Duration::from_millis(left_ms.unsigned_abs()).max(RPC_TIMEOUT);
        let mut client = ctx.client.clone();
        let sent = tokio::select! {
            _ = shutdown.triggered() => return,
            r = client.upload_update(request(futures::stream::iter(chunks), timeout)) => r,
        };
        match sent {
            Ok(response) => {
                let response = response.into_inner();
                info!(
                    %round_id,
                    coordinator_norm = response.norm,
                    updates_received = response.updates_received,
                    "update accepted"
                );
                ctx.update_status(|s| s.rounds_trained += 1);
                return;
            }
            Err(status) if attempt > 1 && status.code() == tonic::Code::AlreadyExists => {
                // An earlier attempt reached the coordinator and was recorded.
                info!(%round_id, "update was already accepted by an earlier attempt");
                ctx.update_status(|s| s.rounds_trained += 1);
                return;
            }
            Err(status) if is_transient(&status) && attempt < UPLOAD_ATTEMPTS => {
                let delay = backoff.next_delay();
                warn!(%round_id, attempt, "upload failed, retrying: {}", crate::describe_status(&status));
                if sleep_or_shutdown(delay, shutdown).await {
                    return;
                }
            }
            Err(status) => {
                warn!(%round_id, "coordinator refused the update: {}", crate::describe_status(&status));
                ctx.set_error(format!(
                    "round {round_id}: update refused: {}",
                    status.message()
                ));
                return;
            }
        }
    }
}

fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Aborted
    )
}
