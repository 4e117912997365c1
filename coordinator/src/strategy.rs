//! Aggregation beyond DP-FedAvg's mean: server optimisers and robust statistics.
//!
//! - **FedAdam / FedYogi** (Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
//!   Algorithm 2): the round's noised mean delta Δ is a pseudo-gradient for a server-side
//!   adaptive step, `m ← β₁m + (1−β₁)Δ`, `v ← β₂v + (1−β₂)Δ²` (Adam) or
//!   `v ← v − (1−β₂)Δ²·sign(v − Δ²)` (Yogi), `x ← x + η·m/(√v + τ)`, with the paper's
//!   β₁ = 0.9, β₂ = 0.99, τ = 10⁻³ and no bias correction. Δ is the DP-FedAvg output, so the
//!   step is post-processing: it costs no privacy. The moments are kept per published version
//!   (see [`crate::registry::Registry::write_moments`]), so a round based on version N continues
//!   from N's moments, and one based on a version made another way starts afresh.
//! - **Coordinate-wise median and trimmed mean** (Yin et al., ICML 2018): each coordinate of
//!   the aggregate is the median, or the mean after dropping the ⌊βn⌋ smallest and largest
//!   values, of that coordinate over the n deltas. A minority of poisoned deltas moves them
//!   little where it drags the mean anywhere within the clip norm. They need every delta at once
//!   (memory n × parameters) and have no sensitivity bound that the Gaussian accountant could
//!   use, so rounds may use them only without noise ([`crate::round::RoundSpec::validate`]),
//!   and a lineage with a privacy budget refuses such rounds (their ε is infinite).

use crate::error::{CoordinatorError, Result};

/// β₁ of FedAdam / FedYogi (Reddi et al., 2021).
pub const BETA1: f64 = 0.9;
/// β₂ of FedAdam / FedYogi.
pub const BETA2: f64 = 0.99;
/// τ, the adaptivity floor of FedAdam / FedYogi; the second moment also starts at τ².
pub const TAU: f64 = 1e-3;

/// The default server learning rate η of FedAdam / FedYogi.
pub const DEFAULT_SERVER_LEARNING_RATE: f32 = 0.01;
/// The default share β trimmed off each end by the trimmed mean.
pub const DEFAULT_TRIM_FRACTION: f32 = 0.1;

/// Which second-moment update a server optimiser uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerOptimizer {
    Adam,
    Yogi,
}

/// The server optimiser's first and second moments, one value per parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub first: Vec<f32>,
    pub second: Vec<f32>,
}

impl Moments {
    /// The starting moments: m = 0, v = τ².
    pub fn fresh(num_parameters: usize) -> Self {
        Self {
            first: vec![0.0; num_parameters],
            second: vec![(TAU * TAU) as f32; num_parameters],
        }
    }
}

/// One server step: updates `moments` with the pseudo-gradient `mean_delta` and moves `params`
/// by η·m/(√v + τ). Refuses mismatched lengths, a bad learning rate, and moments that are not
/// finite or have a negative second moment (a corrupted state must not reach the weights).
pub fn server_step(
    optimizer: ServerOptimizer,
    learning_rate: f32,
    params: &mut [f32],
    mean_delta: &[f32],
    moments: &mut Moments,
) -> Result<()> {
    let n = params.len();
    if mean_delta.len() != n || moments.first.len() != n || moments.second.len() != n {
        return Err(CoordinatorError::InvalidArgument(format!(
            "server step: {n} parameters, {} delta values, {}/{} moment values",
            mean_delta.len(),
            moments.first.len(),
            moments.second.len()
        )));
    }
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return Err(CoordinatorError::InvalidArgument(format!(
            "server learning rate must be finite and > 0, got {learning_rate}"
        )));
    }
    if let Some(bad) = moments
        .first
        .iter()
        .zip(&moments.second)
        .position(|(m, v)| !(m.is_finite() && v.is_finite() && *v >= 0.0))
    {
        return Err(CoordinatorError::Internal(format!(
            "server optimiser state is invalid at parameter {bad}: m = {}, v = {}",
            moments.first[bad], moments.second[bad]
        )));
    }
    let eta = f64::from(learning_rate);
    let moved = params
        .iter_mut()
        .zip(mean_delta)
        .zip(moments.first.iter_mut().zip(moments.second.iter_mut()));
    for ((x, d), (m, v)) in moved {
        let d = f64::from(*d);
        let d2 = d * d;
        let first = BETA1 * f64::from(*m) + (1.0 - BETA1) * d;
        let second = match optimizer {
            ServerOptimizer::Adam => BETA2 * f64::from(*v) + (1.0 - BETA2) * d2,
            ServerOptimizer::Yogi => {
                let v = f64::from(*v);
                // Yogi's v never goes below 0: v − (1−β₂)d² only when v > d², then ≥ β₂v.
                v - (1.0 - BETA2) * d2 * sign(v - d2)
            }
        };
        *m = first as f32;
        *v = second as f32;
        *x = (f64::from(*x) + eta * first / (second.sqrt() + TAU)) as f32;
    }
    Ok(())
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Coordinate-wise median of the deltas (the mean of the two middle values for an even count).
pub fn coordinate_median(deltas: &[Vec<f32>]) -> Result<Vec<f32>> {
    let n = check_same_length(deltas)?;
    let count = deltas.len();
    let mut column = vec![0.0f32; count];
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        for (c, delta) in column.iter_mut().zip(deltas) {
            *c = delta[j];
        }
        let mid = count / 2;
        let (low, upper, _) = column.select_nth_unstable_by(mid, f32::total_cmp);
        let upper = f64::from(*upper);
        let value = if count % 2 == 1 {
            upper
        } else {
            // The lower middle value is the largest of the half below `mid`.
            let lower = low.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (f64::from(lower) + upper) / 2.0
        };
        out.push(value as f32);
    }
    Ok(out)
}

/// Coordinate-wise trimmed mean: the mean of each coordinate's values after dropping the
/// k = ⌊β·n⌋ smallest and k largest. β = 0 is the plain mean; β must be in [0, 0.5).
pub fn trimmed_mean(deltas: &[Vec<f32>], trim_fraction: f32) -> Result<Vec<f32>> {
    let n = check_same_length(deltas)?;
    if !(0.0..0.5).contains(&trim_fraction) {
        return Err(CoordinatorError::InvalidArgument(format!(
            "trim fraction must be in [0, 0.5), got {trim_fraction}"
        )));
    }
    let count = deltas.len();
    let k = trimmed_per_side(count, trim_fraction);
    let kept = count - 2 * k;
    let mut column = vec![0.0f32; count];
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        for (c, delta) in column.iter_mut().zip(deltas) {
            *c = delta[j];
        }
        let middle = if k == 0 {
            &mut column[..]
        } else {
            // Smallest k to the left of index k; then the kept values are the `kept` smallest
            // of what is right of them.
            let (_, _, above) = column.select_nth_unstable_by(k - 1, f32::total_cmp);
            if kept < above.len() {
                above.select_nth_unstable_by(kept, f32::total_cmp);
            }
            &mut above[..kept]
        };
        let sum: f64 = middle.iter().map(|v| f64::from(*v)).sum();
        out.push((sum / kept as f64) as f32);
    }
    Ok(out)
}

/// How many values the trimmed mean drops at each end of `count` values.
pub fn trimmed_per_side(count: usize, trim_fraction: f32) -> usize {
    let k = (f64::from(trim_fraction) * count as f64).floor() as usize;
    // β < 0.5 keeps at least one value; the min guards against rounding at the edge.
    k.min(count.saturating_sub(1) / 2)
}

fn check_same_length(deltas: &[Vec<f32>]) -> Result<usize> {
    let Some(first) = deltas.first() else {
        return Err(CoordinatorError::FailedPrecondition(
            "no updates to aggregate".into(),
        ));
    };
    let n = first.len();
    if let Some((i, d)) = deltas.iter().enumerate().find(|(_, d)| d.len() != n) {
        return Err(CoordinatorError::InvalidArgument(format!(
            "delta {i} has {} values, expected {n}",
            d.len()
        )));
    }
    if let Some(i) = deltas.iter().position(|d| d.iter().any(|v| !v.is_finite())) {
        return Err(CoordinatorError::InvalidArgument(format!(
            "delta {i} holds a non-finite value"
        )));
    }
    Ok(n)
}

#[cfg(test)]
#[path = "strategy_tests.rs"]
mod strategy_tests;
