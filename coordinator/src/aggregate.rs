//! Streaming DP-FedAvg: clipped deltas are summed one at a time (memory O(parameters), never
//! O(clients × parameters)), then central Gaussian noise N(0, (zC)²) is added to every coordinate
//! of the sum, which is divided by the expected number of clients (the round's target; the
//! actual count if more arrived), as in DP-FedAvg with a fixed denominator.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use crate::error::{CoordinatorError, Result};

/// Running sum of client deltas.
#[derive(Debug)]
pub struct DpFedAvg {
    sum: Vec<f64>,
    count: usize,
}

impl DpFedAvg {
    pub fn new(num_parameters: usize) -> Self {
        Self {
            sum: vec![0.0; num_parameters],
            count: 0,
        }
    }

    /// Adds one (already validated) delta.
    pub fn add(&mut self, delta: &[f32]) -> Result<()> {
        if delta.len() != self.sum.len() {
            return Err(CoordinatorError::InvalidArgument(format!(
                "delta has {} values, expected {}",
                delta.len(),
                self.sum.len()
            )));
        }
        for (s, d) in self.sum.iter_mut().zip(delta) {
            *s += f64::from(*d);
        }
        self.count += 1;
        Ok(())
    }

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

    /// As [`DpFedAvg::finish`] with a given generator (tests use a seeded one).
    pub fn finish_with_rng(
        mut self,
        clip_norm: f32,
        noise_multiplier: f32,
        expected_clients: usize,
        rng: &mut (impl rand::CryptoRng + rand::Rng),
    ) -> Result<Vec<f32>> {
        if self.count == 0 {
            return Err(CoordinatorError::FailedPrecondition(
                "no updates to aggregate".into(),
            ));
        }
        let sigma = f64::from(noise_multiplier) * f64::from(clip_norm);
        if sigma > 0.0 {
            let normal = Normal::new(0.0, sigma)
                .map_err(|e| CoordinatorError::InvalidArgument(format!("noise scale: {e}")))?;
            for s in &mut self.sum {
                *s += normal.sample(rng);
            }
        }
        let n = self.count.max(expected_clients) as f64;
        Ok(self.sum.iter().map(|s| (s / n) as f32).collect())
    }
}

/// L2 norm computed in f64.
pub fn l2_norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| f64::from(*v) * f64::from(*v))
        .sum::<f64>()
        .sqrt()
}

/// Reads a stored update blob (little-endian f32).
pub fn read_update_blob(path: &std::path::Path, expected: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path)
        .map_err(|e| CoordinatorError::io(format!("cannot read update {}", path.display()), e))?;
    if bytes.len() != expected * 4 {
        return Err(CoordinatorError::Internal(format!(
            "update {} has {} bytes, expected {}",
            path.display(),
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
mod aggregate_tests {
    use super::*;

    #[test]
    fn mean_is_exact_without_noise() {
        let mut agg = DpFedAvg::new(3);
        agg.add(&[1.0, 2.0, 3.0]).ok();
        agg.add(&[3.0, 2.0, -3.0]).ok();
        let mean = agg.finish(1.0, 0.0, 2).unwrap_or_default();
        assert_eq!(mean, vec![2.0, 2.0, 0.0]);
        let mut agg = DpFedAvg::new(1);
        agg.add(&[3.0]).ok();
        // One of two expected clients answered: the fixed denominator halves the update.
        assert_eq!(agg.finish(1.0, 0.0, 2).unwrap_or_default(), vec![1.5]);
    }

    #[test]
    fn refuses_wrong_length_and_empty() {
        let mut agg = DpFedAvg::new(3);
        assert!(agg.add(&[1.0]).is_err());
        assert!(agg.finish(1.0, 1.0, 1).is_err());
    }

    #[test]
    fn noise_has_the_configured_scale() {
        // n = 200_000 samples of N(0, (zC)^2)/k: the sample std is within 1% of the truth with
        // probability far above 1 - 1e-9 (its relative standard error is 1/sqrt(2n) ≈ 0.16%).
        let n = 200_000;
        let k = 4;
        let (clip, z) = (0.5_f32, 1.2_f32);
        let mut agg = DpFedAvg::new(n);
        for _ in 0..k {
            agg.add(&vec![0.0; n]).ok();
        }
        let mut rng = StdRng::seed_from_u64(7);
        let mean = agg
            .finish_with_rng(clip, z, k, &mut rng)
            .unwrap_or_default();
        let var = mean.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / n as f64;
        let expected = f64::from(z * clip) / k as f64;
        let ratio = var.sqrt() / expected;
        assert!((ratio - 1.0).abs() < 0.01, "std ratio {ratio}");
        let m = mean.iter().map(|v| f64::from(*v)).sum::<f64>() / n as f64;
        assert!(m.abs() < 5.0 * expected / (n as f64).sqrt(), "mean {m}");
    }
}
