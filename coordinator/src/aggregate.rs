//! Streaming DP-FedAvg: clipped deltas are summed one at a time (memory O(parameters), never
//! O(clients × parameters)), then central Gaussian noise N(0, (zC)²) is added to every coordinate
//! of the sum, which is divided by the expected number of clients (the round's target; the
//! actual count if more arrived), as in DP-FedAvg with a fixed denominator.
//!
//! Every delta's norm is re-checked before it is summed ([`DpFedAvg::add_clipped`]): a node is
//! never trusted to have clipped. Speed: the norm pass keeps several independent f64
//! accumulators and the sum pass is element-wise, so both compile to SIMD loops bound by memory
//! bandwidth; noise, division and the f32 conversion share one final pass.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::StandardNormal;

use crate::error::{CoordinatorError, Result};

/// The largest noise standard deviation accepted: far beyond any useful scale, and small enough
/// that the noised sum always stays finite.
pub const MAX_NOISE_STD: f64 = 1e30;

/// Relative margin taken off a re-clipping scale, so that f64 rounding in the norm (at most a
/// few 1e-11 relative for 1e6 values) cannot leave a re-clipped contribution above C.
const RECLIP_MARGIN: f64 = 1e-9;

/// What the coordinator does with a delta whose norm is above the clip norm C.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverClipPolicy {
    /// Leave it out of the sum (a node that sends such a delta is faulty or malicious).
    #[default]
    Refuse,
    /// Scale it to norm C and sum it.
    Reclip,
}

/// What [`DpFedAvg::add_clipped`] did with one delta.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClipAction {
    /// The norm was within C: summed as sent.
    Added { norm: f64 },
    /// The norm was above C: summed after scaling by `scale` (≈ C/norm).
    Reclipped { norm: f64, scale: f64 },
    /// Not summed: the norm was above C under [`OverClipPolicy::Refuse`], or the delta holds a
    /// non-finite value (its norm is then NaN or infinite), whatever the policy.
    Refused { norm: f64 },
}

/// Running sum of client deltas.
#[derive(Debug)]
pub struct DpFedAvg {
    sum: Vec<f64>,
    count: usize,
    policy: OverClipPolicy,
}

impl DpFedAvg {
    /// An empty sum for `num_parameters` values that refuses deltas above C.
    pub fn new(num_parameters: usize) -> Self {
        Self {
            sum: vec![0.0; num_parameters],
            count: 0,
            policy: OverClipPolicy::default(),
        }
    }

    /// Sets what [`DpFedAvg::add_clipped`] does with a delta above C.
    pub fn with_over_clip_policy(mut self, policy: OverClipPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Adds one (already validated) delta as it is.
    pub fn add(&mut self, delta: &[f32]) -> Result<()> {
        self.check_len(delta)?;
        for (s, d) in self.sum.iter_mut().zip(delta) {
            *s += f64::from(*d);
        }
        self.count += 1;
        Ok(())
    }

    /// Re-checks the delta's L2 norm against `clip_norm` and sums it, re-clips it or refuses it
    /// according to the [`OverClipPolicy`]. A refused delta leaves the sum and the count as
    /// they were.
    pub fn add_clipped(&mut self, delta: &[f32], clip_norm: f32) -> Result<ClipAction> {
        self.check_len(delta)?;
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "clip norm must be finite and positive, got {clip_norm}"
            )));
        }
        let limit = f64::from(clip_norm);
        let norm = l2_norm(delta);
        if !norm.is_finite() {
            return Ok(ClipAction::Refused { norm });
        }
        if norm <= limit {
            self.add(delta)?;
            return Ok(ClipAction::Added { norm });
        }
        match self.policy {
            OverClipPolicy::Refuse => Ok(ClipAction::Refused { norm }),
            OverClipPolicy::Reclip => {
                let scale = limit / norm * (1.0 - RECLIP_MARGIN);
                for (s, d) in self.sum.iter_mut().zip(delta) {
                    *s += f64::from(*d) * scale;
                }
                self.count += 1;
                Ok(ClipAction::Reclipped { norm, scale })
            }
        }
    }

    /// How many deltas the sum holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The noised average: (Σ deltas + N(0, σ²)) / max(expected_clients, n) with
    /// σ = noise_multiplier × clip_norm. The noise comes from a ChaCha generator seeded from the
    /// operating system (a CSPRNG).
    pub fn finish(
        self,
        clip_norm: f32,
        noise_multiplier: f32,
        expected_clients: usize,
    ) -> Result<Vec<f32>> {
        let mut rng = StdRng::from_os_rng();
        self.finish_with_rng(clip_norm, noise_multiplier, expected_clients, &mut rng)
    }

    /// As [`DpFedAvg::finish`] with a given generator (tests use a seeded one). Refuses a
    /// negative or non-finite clip norm or noise multiplier.
    pub fn finish_with_rng(
        self,
        clip_norm: f32,
        noise_multiplier: f32,
        expected_clients: usize,
        rng: &mut (impl rand::CryptoRng + rand::Rng),
    ) -> Result<Vec<f32>> {
        for (name, value) in [
            ("clip norm", clip_norm),
            ("noise multiplier", noise_multiplier),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "{name} must be finite and non-negative, got {value}"
                )));
            }
        }
        let sigma = f64::from(noise_multiplier) * f64::from(clip_norm);
        let denominator = self.count.max(expected_clients) as f64;
        self.finish_with_noise_std(sigma, denominator, rng)
    }

    /// (Σ deltas + N(0, `noise_std`²)) / `denominator`, for any noise split: the central mode
    /// passes σ = zC, the distributed mode (each node added its own share) passes the
    /// remaining σ, possibly 0, which adds nothing. Refuses an empty sum, a negative,
    /// non-finite or too large ([`MAX_NOISE_STD`]) `noise_std`, and a denominator that is not
    /// finite and at least 1.
    pub fn finish_with_noise_std(
        self,
        noise_std: f64,
        denominator: f64,
        rng: &mut (impl rand::CryptoRng + rand::Rng),
    ) -> Result<Vec<f32>> {
        if self.count == 0 {
            return Err(CoordinatorError::FailedPrecondition(
                "no updates to aggregate".into(),
            ));
        }
        if !(0.0..=MAX_NOISE_STD).contains(&noise_std) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "noise standard deviation must be finite, non-negative and at most 1e30, got \
                 {noise_std}"
            )));
        }
        if !(denominator.is_finite() && denominator >= 1.0) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "denominator must be finite and at least 1, got {denominator}"
            )));
        }
        if noise_std == 0.0 {
            return Ok(self.sum.iter().map(|s| (s / denominator) as f32).collect());
        }
        Ok(self
            .sum
            .iter()
            .map(|s| {
                let z: f64 = rng.sample(StandardNormal);
                ((s + noise_std * z) / denominator) as f32
            })
            .collect())
    }

    fn check_len(&self, delta: &[f32]) -> Result<()> {
        if delta.len() == self.sum.len() {
            return Ok(());
        }
        Err(CoordinatorError::InvalidArgument(format!(
            "delta has {} values, expected {}",
            delta.len(),
            self.sum.len()
        )))
    }
}

/// One step of weighted FedAvg (McMahan et al., Σ nᵢ xᵢ / Σ nᵢ) on raw little-endian f32
/// bytes: `sum[j] += weight × x[j]` in f64, decoding and accumulating in one pass. Returns
/// `false` (the caller must discard `sum`) when a value is not finite or the lengths differ.
/// Callers that block the parameter range so `sum` stays in cache read each input once.
pub fn accumulate_weighted_le(sum: &mut [f64], bytes: &[u8], weight: f64) -> bool {
    if bytes.len() != sum.len() * 4 {
        return false;
    }
    let mut finite = true;
    for (s, b) in sum.iter_mut().zip(bytes.chunks_exact(4)) {
        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        finite &= v.is_finite();
        *s += weight * f64::from(v);
    }
    finite
}

/// L2 norm in f64 (shared with the node, which clips with the same arithmetic).
pub use backroom_models::params::l2_norm;

/// Decodes a stored update blob (little-endian f32) after checking it against the SHA-256
/// recorded when it was accepted, hashing the bytes as read (no re-encoding). `name` is the
/// blob's reference, for messages.
pub fn decode_update_blob(
    bytes: &[u8],
    name: &str,
    expected: usize,
    expected_sha256: &str,
) -> Result<Vec<f32>> {
    let digest = backroom_models::manifest::sha256_hex(bytes);
    if digest != expected_sha256 {
        return Err(CoordinatorError::Internal(format!(
            "stored update {name} does not match its recorded SHA-256"
        )));
    }
    if bytes.len() != expected * 4 {
        return Err(CoordinatorError::Internal(format!(
            "update {name} has {} bytes, expected {}",
            bytes.len(),
            expected * 4
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod aggregate_tests;
