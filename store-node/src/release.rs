//! Differentially private releases of closed shelf-metric windows, through OpenDP.
//!
//! A [`ClosedWindow`] holds raw counts and never leaves memory: at window close the camera turns
//! it into a [`NoisedRelease`] here, and only that release is queued, persisted and sent.
//!
//! # Privacy unit
//! Two windows are neighbours when one has **one camera frame more or less** than the other:
//! one moment of whoever stood in front of the shelf. Each metric is computed from one window's
//! frames only (stocked → empty transitions are not counted across a window boundary, see
//! [`crate::camera::WindowAggregator`]), so a frame influences exactly one release.
//!
//! With `S` slots per frame (`camera.slots`) and `spf` seconds per frame, adding or removing one
//! frame changes the raw counts by at most:
//!
//! | metric | released as | sensitivity |
//! | --- | --- | --- |
//! | frames | count | 1 |
//! | empty-slot observations | `out_of_stock_minutes` = empty × `spf` / 60 | `S` (minutes: `S·spf/60`) |
//! | stocked → empty transitions | `out_of_stock_events` | `S` (proof at [`ShelfMetric::count_sensitivity`]) |
//!
//! Occupancy (the share of slot observations that were stocked) is derived downstream from the
//! noised frames and minutes; deriving it is post-processing and costs no budget.
//!
//! The window's length does not change these sensitivities: a longer window holds more frames,
//! but one frame still moves each count by the same bound.
//!
//! # Mechanism and composition
//! Each metric is released with OpenDP's [`make_gaussian`] on integers (an exact discrete
//! Gaussian sampler, so no floating-point side channel), whose privacy map gives
//! ρ-zero-concentrated DP (zCDP) for the metric's sensitivity. A release's ρ is split between the
//! metrics ([`ShelfMetric::rho_share`]) and the per-metric ρ values are summed with OpenDP's zCDP
//! composition ([`CompositionMeasure::compose`] for [`ZeroConcentratedDivergence`]): the noise
//! scales are calibrated so that the composed, OpenDP-certified ρ is at most the configured
//! `rho_per_release`, which is what the node's ledger charges.
//!
//! **Group privacy.** The guarantee is per frame. A person visible in `k` frames of one window is
//! protected at `k²·ρ` for that release (zCDP group privacy grows with the square of the group
//! size, Bun & Steinke 2016, Prop. 1.9). Seen in `k_i` frames of window `i` over a day, the
//! person's releases compose to `Σ k_i²·ρ_release ≤ min(k²·ρ_release, max_i k_i² · ρ_day)` with
//! `k = Σ k_i`. Per-frame protection of a long visit is therefore weak; that is inherent in this
//! unit, and the budget is the operator's lever. (For pure ε-DP, group privacy would be `k·ε`.)
//!
//! # Suppression
//! A metric whose *noised* count falls below `suppress_below` is released as suppressed, with no
//! value. Suppression looks only at the noised output, so it is post-processing and costs no
//! budget.
//!
//! # Randomness
//! Built without its `use-openssl` feature, OpenDP draws its bits from `rand` 0.7's
//! `thread_rng()` (ChaCha20, seeded and re-seeded every 64 KiB from the operating system's
//! generator). OpenDP calls this fallback "non-secure" because it does not vouch for it; it is a
//! cryptographically strong generator, but not the OpenSSL one OpenDP's proofs assume.

use opendp::combinators::CompositionMeasure;
use opendp::domains::AtomDomain;
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::AbsoluteDistance;
use serde::{Deserialize, Serialize};

use crate::camera::ClosedWindow;

/// Errors while releasing a window.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("invalid release policy: {0}")]
    Policy(String),
    #[error("{metric} count {count} is too large to release")]
    OutOfRange { metric: &'static str, count: u64 },
    #[error("opendp: {0}")]
    OpenDp(String),
    #[error("cannot calibrate noise to rho = {rho}")]
    Calibration { rho: f64 },
}

/// A metric released for every window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShelfMetric {
    /// Frames in the window.
    Frames,
    /// Stocked → empty transitions between consecutive frames of the window.
    OutOfStockEvents,
    /// Empty-slot observations converted to slot-minutes.
    OutOfStockMinutes,
}

impl ShelfMetric {
    /// Every released metric, in wire order.
    pub const ALL: [ShelfMetric; 3] = [
        ShelfMetric::Frames,
        ShelfMetric::OutOfStockEvents,
        ShelfMetric::OutOfStockMinutes,
    ];

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ShelfMetric::Frames => "frames",
            ShelfMetric::OutOfStockEvents => "out_of_stock_events",
            ShelfMetric::OutOfStockMinutes => "out_of_stock_minutes",
        }
    }

    /// The metric with this wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Share of a release's ρ spent on this metric (the shares sum to 1). Frames have
    /// sensitivity 1 and need little ρ for a useful scale; the two per-slot metrics share the
    /// rest.
    pub fn rho_share(self) -> f64 {
        match self {
            ShelfMetric::Frames => 0.2,
            ShelfMetric::OutOfStockEvents | ShelfMetric::OutOfStockMinutes => 0.4,
        }
    }

    /// The raw count this metric is computed from.
    pub fn count(self, window: &ClosedWindow) -> u64 {
        match self {
            ShelfMetric::Frames => window.frames,
            ShelfMetric::OutOfStockEvents => window.out_of_stock_events,
            ShelfMetric::OutOfStockMinutes => window.empty_slot_observations,
        }
    }

    /// How much adding or removing one frame can change [`ShelfMetric::count`], with `slots`
    /// slots per frame.
    ///
    /// - Frames: by 1.
    /// - Empty-slot observations: the frame's own empty slots, at most `slots`.
    /// - Stocked → empty transitions: take one slot and the frames `a, b, c` around the removed
    ///   frame `b`. Before removal the slot contributes `[a→b] + [b→c]`; `a→b` needs `b` empty
    ///   and `b→c` needs `b` stocked, so at most one of them is 1 and the sum is 0 or 1. After
    ///   removal it contributes `[a→c]`, also 0 or 1. So the slot's count moves by at most 1
    ///   (also when `b` is first or last, where one term simply disappears), and the window's
    ///   count by at most `slots`. Adding a frame is the same argument read backwards.
    pub fn count_sensitivity(self, slots: u64) -> u64 {
        match self {
            ShelfMetric::Frames => 1,
            ShelfMetric::OutOfStockEvents | ShelfMetric::OutOfStockMinutes => slots,
        }
    }

    /// Factor from the raw count to the released unit.
    pub fn unit(self, seconds_per_frame: u32) -> f64 {
        match self {
            ShelfMetric::Frames | ShelfMetric::OutOfStockEvents => 1.0,
            ShelfMetric::OutOfStockMinutes => f64::from(seconds_per_frame) / 60.0,
        }
    }
}

/// How releases are made; from the node's `[metrics]` and `[camera]` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleasePolicy {
    /// zCDP cost of one window's release.
    pub rho_per_release: f64,
    /// Noised counts below this are suppressed.
    pub suppress_below: u64,
    /// Slots per frame (`S`).
    pub slots: u32,
    /// Simulated seconds between frames.
    pub seconds_per_frame: u32,
}

/// One noised statistic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoisedMetric {
    pub name: String,
    /// Noised value in the metric's unit; `None` when suppressed.
    pub value: Option<f64>,
    pub suppressed: bool,
    /// Standard-deviation scale of the noise, in the metric's unit.
    pub noise_scale: f64,
    /// How much one frame can change the true value, in the metric's unit.
    pub sensitivity: f64,
}

/// What leaves the node for one window: noised metrics and the public parameters of the release.
#[derive(Clone, Debug, PartialEq)]
pub struct NoisedRelease {
    pub camera_id: u32,
    pub window_start_unix: i64,
    pub window_secs: u32,
    pub slots_per_frame: u32,
    pub seconds_per_frame: u32,
    /// zCDP cost charged for this release (at least what OpenDP certifies).
    pub rho: f64,
    pub metrics: Vec<NoisedMetric>,
}

/// Noise scales (in raw-count units) whose composed zCDP cost is at most `rho`, with that cost.
pub fn calibrate(rho: f64, slots: u32) -> Result<([f64; 3], f64), ReleaseError> {
    if !(rho.is_finite() && rho > 0.0) {
        return Err(ReleaseError::Policy(format!(
            "rho_per_release must be positive and finite, got {rho}"
        )));
    }
    if slots == 0 {
        return Err(ReleaseError::Policy("slots must be at least 1".into()));
    }
    let mut scales = ShelfMetric::ALL.map(|m| {
        let sensitivity = m.count_sensitivity(u64::from(slots)) as f64;
        sensitivity / (2.0 * rho * m.rho_share()).sqrt()
    });
    // Floating-point rounding (OpenDP rounds its maps up) may put the composed cost a hair over
    // the target; widen the noise by a negligible factor until it is not.
    for _ in 0..64 {
        let certified = certified_rho(&scales, slots)?;
        if certified <= rho {
            return Ok((scales, certified));
        }
        for scale in &mut scales {
            *scale *= 1.0 + 1e-9;
        }
    }
    Err(ReleaseError::Calibration { rho })
}

/// OpenDP's composed zCDP cost of one release with these noise scales.
fn certified_rho(scales: &[f64; 3], slots: u32) -> Result<f64, ReleaseError> {
    let mut parts = Vec::with_capacity(scales.len());
    for (metric, scale) in ShelfMetric::ALL.into_iter().zip(scales) {
        let measurement = gaussian(*scale)?;
        let d_in = i64::try_from(metric.count_sensitivity(u64::from(slots)))
            .map_err(|_| ReleaseError::Policy("slots out of range".into()))?;
        parts.push(measurement.map(&d_in).map_err(opendp_error)?);
    }
    ZeroConcentratedDivergence
        .compose(parts)
        .map_err(opendp_error)
}

type IntegerGaussian = opendp::core::Measurement<
    AtomDomain<i64>,
    AbsoluteDistance<i64>,
    ZeroConcentratedDivergence,
    i64,
>;

fn gaussian(scale: f64) -> Result<IntegerGaussian, ReleaseError> {
    make_gaussian::<_, _, ZeroConcentratedDivergence>(
        AtomDomain::<i64>::default(),
        AbsoluteDistance::<i64>::default(),
        scale,
        None,
    )
    .map_err(opendp_error)
}

fn opendp_error(error: opendp::error::Error) -> ReleaseError {
    ReleaseError::OpenDp(error.to_string().trim().to_owned())
}

/// Releases one closed window under `policy`. CPU work of a few exact samples (well under a
/// millisecond); callers on the async runtime still run it with `spawn_blocking`.
pub fn release_window(
    window: &ClosedWindow,
    policy: &ReleasePolicy,
) -> Result<NoisedRelease, ReleaseError> {
    let (scales, _certified) = calibrate(policy.rho_per_release, policy.slots)?;
    let mut metrics = Vec::with_capacity(ShelfMetric::ALL.len());
    for (metric, scale) in ShelfMetric::ALL.into_iter().zip(scales) {
        let count = metric.count(window);
        let input = i64::try_from(count).map_err(|_| ReleaseError::OutOfRange {
            metric: metric.name(),
            count,
        })?;
        let noised = gaussian(scale)?.invoke(&input).map_err(opendp_error)?;
        let threshold = i64::try_from(policy.suppress_below).unwrap_or(i64::MAX);
        let suppressed = noised < threshold;
        let unit = metric.unit(policy.seconds_per_frame);
        metrics.push(NoisedMetric {
            name: metric.name().to_owned(),
            value: (!suppressed).then_some(noised as f64 * unit),
            suppressed,
            noise_scale: scale * unit,
            sensitivity: metric.count_sensitivity(u64::from(policy.slots)) as f64 * unit,
        });
    }
    Ok(NoisedRelease {
        camera_id: window.camera_id,
        window_start_unix: window.window_start_unix,
        window_secs: window.window_secs,
        slots_per_frame: policy.slots,
        seconds_per_frame: policy.seconds_per_frame,
        rho: policy.rho_per_release,
        metrics,
    })
}
