//! The camera pipeline: frames from the camera's source ([`crate::frames`]), redaction
//! ([`crate::redact`]) before anything else, inference with the live model on the slot crops,
//! the encrypted local store ([`crate::local_store`]), per-window shelf counts, and at window
//! close a noised release ([`crate::release`]) charged to the privacy ledger
//! ([`crate::ledger`]) and queued. Only noised releases are queued for sending.

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::Context;
use backroom_datasets::CameraReplay;
use backroom_models::LoadedModel;
use tracing::{debug, info, warn};

use crate::config::FrameSourceSettings;
use crate::frames::capture::spawn_capture;
use crate::frames::sources::{
    FrameSource, ImageSequence, SyntheticShelf, WatchedDir, synthetic_grid,
};
use crate::frames::{RedactedFrame, SlotGrid};
use crate::ledger::ReleaseOutcome;
use crate::metrics_sync::idempotency_key;
use crate::redact::motion::{GateReport, GateSettings, MotionGate};
use crate::redact::moving::MaskSettings;
use crate::release::{ReleasePolicy, release_window};
use crate::transport::Shutdown;
use crate::{NodeContext, now_unix_ms};

/// Model output for an empty slot (`0` is stocked).
pub const SLOT_EMPTY: u8 = 1;
/// Model output for a stocked slot.
pub const SLOT_STOCKED: u8 = 0;
/// A slot that redaction filled (in part) in this frame: not observed, whatever the model says
/// of the grey.
pub const SLOT_OCCLUDED: u8 = 2;

/// Raw counts of one finished window. Held in memory only: what is queued and sent is its
/// noised release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedWindow {
    pub camera_id: u32,
    pub window_start_unix: i64,
    pub window_secs: u32,
    pub frames: u64,
    pub slot_observations: u64,
    pub empty_slot_observations: u64,
    pub out_of_stock_events: u64,
}

/// Groups per-frame slot states into fixed windows (`floor(captured_unix / window_secs)`) and
/// counts stocked → empty transitions between consecutive frames of the same window (never
/// across a boundary, so each frame influences exactly one window's release).
#[derive(Debug)]
pub struct WindowAggregator {
    camera_id: u32,
    window_secs: u32,
    current: Option<ClosedWindow>,
    previous_states: Option<Vec<u8>>,
}

impl WindowAggregator {
    pub fn new(camera_id: u32, window_secs: u32) -> Self {
        Self {
            camera_id,
            window_secs: window_secs.max(1),
            current: None,
            previous_states: None,
        }
    }

    /// Start of the window holding `captured_unix`.
    pub fn window_start(&self, captured_unix: i64) -> i64 {
        let secs = i64::from(self.window_secs);
        captured_unix.div_euclid(secs) * secs
    }

    /// Adds one frame's slot states; returns the previous window when this frame opens a new one.
    pub fn observe(&mut self, captured_unix: i64, states: &[u8]) -> Option<ClosedWindow> {
        let start = self.window_start(captured_unix);
        let closed = match &self.current {
            Some(window) if window.window_start_unix == start => None,
            _ => {
                self.previous_states = None;
                self.current.take()
            }
        };
        let window = self.current.get_or_insert(ClosedWindow {
            camera_id: self.camera_id,
            window_start_unix: start,
            window_secs: self.window_secs,
            frames: 0,
            slot_observations: 0,
            empty_slot_observations: 0,
            out_of_stock_events: 0,
        });
        window.frames += 1;
        let seen = || states.iter().filter(|&&s| s != SLOT_OCCLUDED);
        window.slot_observations += seen().count() as u64;
        window.empty_slot_observations += seen().filter(|&&s| s == SLOT_EMPTY).count() as u64;
        // Transitions against each slot's last observed state: an occluded slot keeps it, so a
        // shelf emptied behind a passing shopper counts once, when it is seen again.
        let previous = match self.previous_states.take() {
            Some(previous) if previous.len() == states.len() => {
                window.out_of_stock_events += previous
                    .iter()
                    .zip(states)
                    .filter(|&(&before, &now)| before == SLOT_STOCKED && now == SLOT_EMPTY)
                    .count() as u64;
                previous
                    .iter()
                    .zip(states)
                    .map(|(&before, &now)| if now == SLOT_OCCLUDED { before } else { now })
                    .collect()
            }
            _ => states.to_vec(),
        };
        self.previous_states = Some(previous);
        closed
    }

    /// Forgets the last frame (after a skipped frame), so no transition spans a gap.
    pub fn forget_previous(&mut self) {
        self.previous_states = None;
    }

    /// The window being filled (not closed; dropped on shutdown).
    pub fn current(&self) -> Option<&ClosedWindow> {
        self.current.as_ref()
    }
}

/// The frame source and slot grid of the configured camera (opening a sequence reads its
/// directory, so this runs on a blocking thread).
fn open_source(ctx: &NodeContext) -> anyhow::Result<(Box<dyn FrameSource>, SlotGrid)> {
    let cam = &ctx.config.camera;
    Ok(match &cam.source {
        FrameSourceSettings::Synthetic => {
            let replay = CameraReplay::new(
                ctx.config.data.world_seed,
                ctx.config.data.store_index,
                cam.camera_id,
                cam.slots,
                cam.start_unix,
                cam.seconds_per_frame,
            );
            let grid = synthetic_grid(cam.slots);
            let source = SyntheticShelf::new(
                replay,
                cam.frame_interval,
                cam.start_unix,
                cam.seconds_per_frame,
            );
            (Box::new(source), grid)
        }
        FrameSourceSettings::Directory { dir, poll_interval } => {
            let grid = cam.slot_grid.context("camera.slot_grid is required")?;
            let source = WatchedDir::new(cam.camera_id, dir.clone(), *poll_interval);
            (Box::new(source), grid)
        }
        FrameSourceSettings::Sequence { dir, repeat } => {
            let grid = cam.slot_grid.context("camera.slot_grid is required")?;
            let source = ImageSequence::open(
                cam.camera_id,
                dir.clone(),
                cam.frame_interval,
                *repeat,
                cam.start_unix,
                cam.seconds_per_frame,
            )?;
            (Box::new(source), grid)
        }
    })
}

/// What processing one frame gave.
struct Processed {
    frame: RedactedFrame,
    states: Option<Result<Vec<u8>, String>>,
    report: GateReport,
}

/// Runs the camera until shutdown or until its source ends. A partial window is never closed
/// on shutdown.
///
/// Each frame goes, on a blocking thread: redaction (first, always) → slot crops → inference;
/// then, back on the runtime: the window counts, and the local store (event always, image
/// every `keep_image_every`).
pub(crate) async fn run_camera(
    ctx: Arc<NodeContext>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut node_ids = ctx.node_id.subscribe();
    let node_id = tokio::select! {
        _ = shutdown.triggered() => return Ok(()),
        id = node_ids.wait_for(Option::is_some) => match id {
            Ok(id) => id.clone().unwrap_or_default(),
            Err(_) => return Ok(()),
        },
    };
    let cam = ctx.config.camera.clone();
    let opener = ctx.clone();
    let (source, grid) = tokio::task::spawn_blocking(move || open_source(&opener))
        .await
        .context("frame source task failed")?
        .context("cannot open the camera's frame source")?;
    let described = source.describe();
    let mut capture =
        spawn_capture(source, cam.queue_frames).context("cannot start the capture thread")?;
    let mut aggregator = WindowAggregator::new(cam.camera_id, ctx.config.metric_window_secs);
    let mut unsaved: VecDeque<ClosedWindow> = VecDeque::new();
    // The network built for the live version, rebuilt only when the version changes.
    let mut loaded: Option<(u64, LoadedModel)> = None;
    // The camera's memory of what its last scans saw (redaction rescans what changed).
    let mut motion_gate: Option<MotionGate> = None;
    let gate_settings = GateSettings {
        refresh_frames: cam.rescan_every_frames,
        ..GateSettings::default()
    };
    let mask_settings = MaskSettings {
        settle_ms: i64::try_from(cam.settle.as_millis()).unwrap_or(i64::MAX),
        ..MaskSettings::default()
    };
    let new_gate = move || {
        if cam.mask_moving {
            MotionGate::with_moving_mask(gate_settings, mask_settings)
        } else {
            MotionGate::new(gate_settings)
        }
    };
    let keep_every = ctx
        .config
        .local_store
        .keep_image_every
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut last_kept_ms: Option<i64> = None;
    info!(camera_id = cam.camera_id, slots = cam.slots, source = %described, %node_id, "camera started");

    loop {
        let raw = tokio::select! {
            _ = shutdown.triggered() => break,
            raw = capture.frames.recv() => match raw {
                Some(raw) => raw,
                None => {
                    info!(camera_id = cam.camera_id, "the camera's frame source ended");
                    break;
                }
            },
        };
        let model = ctx.installed_model();
        let device = ctx.device.clone();
        let redactor = ctx.redactor.clone();
        let mut network = loaded.take();
        let mut gate = motion_gate.take().unwrap_or_else(&new_gate);
        let job = tokio::task::spawn_blocking(move || {
            // Redaction first: nothing else ever sees the raw frame, which is zeroed here.
            let (frame, report) = redactor.redact_frame_gated(raw, &mut gate);
            let occluded = grid.cells_touching(&frame.regions);
            let states = model.map(|m| {
                let crops = grid.crops(&frame.image).map_err(|e| e.to_string())?;
                let reuse = matches!(&network, Some((version, _)) if *version == m.version());
                if !reuse {
                    network = None;
                    let built = LoadedModel::new(&device, &m.config, &m.params)
                        .map_err(|e| e.to_string())?;
                    network = Some((m.version(), built));
                }
                let mut states = match &network {
                    Some((_, net)) => net.predict(&crops).map_err(|e| e.to_string())?,
                    None => Vec::new(),
                };
                if states.len() == occluded.len() {
                    for (state, &hidden) in states.iter_mut().zip(&occluded) {
                        if hidden {
                            *state = SLOT_OCCLUDED;
                        }
                    }
                }
                Ok(states)
            });
            let processed = Processed {
                frame,
                states,
                report,
            };
            (processed, network, gate)
        });
        let joined = tokio::select! {
            _ = shutdown.triggered() => break,
            joined = job => joined,
        };
        let (processed, network, gate) = match joined {
            Ok(parts) => parts,
            Err(join) => anyhow::bail!("camera frame task failed: {join}"),
        };
        loaded = network;
        motion_gate = Some(gate);
        let Processed {
            frame,
            states,
            report,
        } = processed;
        let captured_unix = frame.captured_unix_ms.div_euclid(1000);
        let (captured, dropped, unreadable) = capture.counters.snapshot();
        let moving = report.moving_regions as u64;
        let faces = (frame.regions.len() as u64).saturating_sub(moving);
        ctx.update_status(|s| {
            s.frames_captured = captured;
            s.frames_dropped = dropped;
            s.frames_unreadable = unreadable;
            s.faces_redacted += faces;
            s.moving_regions_filled += moving;
            s.frames_fully_masked += u64::from(report.masked >= 0.999);
        });
        match states {
            None => {
                debug!(captured_unix, "no model installed; frame skipped");
                aggregator.forget_previous();
            }
            Some(Err(error)) => {
                warn!(captured_unix, "inference failed; frame skipped: {error}");
                ctx.set_error(format!("inference failed: {error}"));
                aggregator.forget_previous();
            }
            Some(Ok(states)) if states.len() != cam.slots => {
                warn!(
                    captured_unix,
                    expected = cam.slots,
                    got = states.len(),
                    "inference returned the wrong number of slots; frame skipped"
                );
                aggregator.forget_previous();
            }
            Some(Ok(states)) => {
                if let Some(closed) = aggregator.observe(captured_unix, &states) {
                    unsaved.push_back(closed);
                }
                ctx.update_status(|s| s.frames_processed += 1);
                let keep = keep_every.is_some_and(|every| {
                    last_kept_ms
                        .is_none_or(|last| frame.captured_unix_ms.saturating_sub(last) >= every)
                });
                match ctx
                    .local_store
                    .record(&frame, &states, keep, now_unix_ms())
                    .await
                {
                    Ok(stored) => {
                        if stored.image_file.is_some() {
                            last_kept_ms = Some(frame.captured_unix_ms);
                        }
                        ctx.update_status(|s| {
                            s.frames_stored += 1;
                            s.images_stored += u64::from(stored.image_file.is_some());
                        });
                    }
                    Err(error) => {
                        warn!(captured_unix, "cannot store the frame locally: {error}");
                        ctx.update_status(|s| {
                            s.store_errors += 1;
                            s.last_error = Some(format!("local store: {error}"));
                        });
                    }
                }
            }
        }
        release_closed_windows(&ctx, &node_id, &mut unsaved).await;
    }
    // Closing the queue stops the capture thread (within its nap); frames still queued are
    // dropped, and zeroed, with it.
    drop(capture.frames);
    if let Some(partial) = aggregator.current() {
        debug!(
            window_start_unix = partial.window_start_unix,
            frames = partial.frames,
            "partial window dropped at shutdown"
        );
    }
    Ok(())
}

/// Releases closed windows: a noised release charged to the ledger and queued, or a refusal when
/// the day's budget is spent. On an error the rest stay in memory and are tried again after the
/// next frame.
async fn release_closed_windows(
    ctx: &NodeContext,
    node_id: &str,
    unsaved: &mut VecDeque<ClosedWindow>,
) {
    let policy = ReleasePolicy {
        rho_per_release: ctx.config.metrics.rho_per_release,
        suppress_below: ctx.config.metrics.suppress_below,
        slots: u32::try_from(ctx.config.camera.slots).unwrap_or(u32::MAX),
        seconds_per_frame: u32::try_from(ctx.config.camera.seconds_per_frame).unwrap_or(u32::MAX),
    };
    let rho_per_day = ctx.config.metrics.rho_per_day;
    while let Some(window) = unsaved.front() {
        let key = idempotency_key(node_id, window.camera_id, window.window_start_unix);
        match release_one(ctx, &key, window, &policy, rho_per_day).await {
            Ok(ReleaseOutcome::Released(budget)) => {
                info!(
                    key = %key,
                    rho = policy.rho_per_release,
                    day = %budget.date,
                    rho_spent = budget.rho_spent,
                    rho_remaining = budget.rho_remaining,
                    "metric window released (noised)"
                );
                ctx.update_status(|s| {
                    s.windows_closed += 1;
                    s.metric_releases += 1;
                    s.metric_budget = Some(budget);
                });
                ctx.windows_ready.notify_one();
            }
            Ok(ReleaseOutcome::Refused(budget)) => {
                warn!(
                    key = %key,
                    rho = policy.rho_per_release,
                    day = %budget.date,
                    rho_spent = budget.rho_spent,
                    rho_budget = budget.rho_budget,
                    "metric window refused: the day's privacy budget is spent; it is dropped"
                );
                ctx.update_status(|s| {
                    s.windows_closed += 1;
                    s.releases_refused += 1;
                    s.metric_budget = Some(budget);
                });
            }
            Ok(ReleaseOutcome::AlreadyRecorded) => {
                // A replay after a restart closes the same window again: released once.
                debug!(key = %key, "metric window closed; it was already released or refused");
                ctx.update_status(|s| s.windows_closed += 1);
            }
            Err(error) => {
                warn!(key = %key, pending = unsaved.len(), "cannot release metric window; will retry: {error:#}");
                ctx.set_error(format!("cannot release metric window: {error:#}"));
                return;
            }
        }
        unsaved.pop_front();
    }
}

/// One window: skipped when already recorded, else noised off the runtime and recorded.
async fn release_one(
    ctx: &NodeContext,
    key: &str,
    window: &ClosedWindow,
    policy: &ReleasePolicy,
    rho_per_day: f64,
) -> anyhow::Result<ReleaseOutcome> {
    if ctx.queue.is_recorded(key).await? {
        return Ok(ReleaseOutcome::AlreadyRecorded);
    }
    let (window, policy) = (window.clone(), policy.clone());
    let release = tokio::task::spawn_blocking(move || release_window(&window, &policy)).await??;
    // Noise drawn for a window that turns out refused (or recorded meanwhile) is discarded
    // unseen; only a recorded release is ever sent.
    Ok(ctx
        .queue
        .record_release(key, &release, rho_per_day, now_unix_ms())
        .await?)
}
