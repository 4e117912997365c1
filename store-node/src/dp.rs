//! The node's part of differential privacy: clip the delta to L2 norm ≤ C, then (in the
//! distributed mode) add this node's share of the Gaussian noise, N(0, σ²) per coordinate with
//! σ = zC/√n for n expected clients, so that the n shares sum to the central N(0, (zC)²).
//!
//! **Architecture Invariant:** noise is added only after clipping, so the part of an upload that
//! depends on the store's data never has norm above C; the noise comes from a cryptographically
//! secure generator ([`os_rng`]).
//!
//! Speed: one fused norm pass, at most one fused scale-and-norm pass, and one noise pass. The
//! noise pass draws f64 standard normals (rand_distr's ziggurat) from ChaCha12 and rounds each
//! noised value to f32 once, so the f32 output carries exactly N(0, σ²) noise up to that final
//! rounding.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::{CryptoRng, Rng};
use rand_distr::StandardNormal;

use crate::trainer::{ClipError, ClipOutcome, clip_l2};

/// The largest noise standard deviation accepted: far beyond any useful scale, and small enough
/// that a noised value always stays finite in f32 (rand_distr's ziggurat never draws beyond
/// about ±14).
pub const MAX_NOISE_STD: f64 = 1e30;

/// A ChaCha12 generator ([`StdRng`]) seeded from the operating system's generator: a CSPRNG for
/// noise. Create one per round; it is cheap (one `getrandom` call).
///
/// # Panics
/// When the operating system's generator is unavailable, as `rand::rng()` does.
pub fn os_rng() -> impl CryptoRng + Rng {
    StdRng::from_os_rng()
}

/// Clips `delta` to L2 norm ≤ `clip_norm` with [`clip_l2`] and then adds N(0, `noise_std`²)
/// to every coordinate; `noise_std == 0` adds nothing. Refuses a negative, non-finite or
/// too-large ([`MAX_NOISE_STD`]) `noise_std` before touching the delta.
///
/// The returned [`ClipOutcome`] describes the clipped delta before noise: its `norm_after` is
/// at most `clip_norm`.
pub fn clip_and_noise(
    delta: &mut [f32],
    clip_norm: f32,
    noise_std: f64,
    rng: &mut (impl CryptoRng + Rng),
) -> Result<ClipOutcome, ClipError> {
    check_noise_std(noise_std)?;
    let outcome = clip_l2(delta, clip_norm)?;
    add_gaussian_noise(delta, noise_std, rng)?;
    Ok(outcome)
}

/// Adds N(0, `noise_std`²) to every value (nothing when `noise_std == 0`), drawing from `rng`.
/// Does not clip: [`clip_and_noise`] is the entry point for deltas.
pub fn add_gaussian_noise(
    values: &mut [f32],
    noise_std: f64,
    rng: &mut (impl CryptoRng + Rng),
) -> Result<(), ClipError> {
    check_noise_std(noise_std)?;
    if noise_std == 0.0 {
        return Ok(());
    }
    for value in values.iter_mut() {
        let z: f64 = rng.sample(StandardNormal);
        *value = (f64::from(*value) + noise_std * z) as f32;
    }
    Ok(())
}

fn check_noise_std(noise_std: f64) -> Result<(), ClipError> {
    if (0.0..=MAX_NOISE_STD).contains(&noise_std) {
        Ok(())
    } else {
        Err(ClipError::InvalidNoiseStd(noise_std))
    }
}
