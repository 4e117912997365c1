//! Statistical checks that samples are N(0, σ²) for a given σ, shared by the noise tests of the
//! store node (`store-node/src/tests/dp.rs`) and of the coordinator
//! (`coordinator/src/aggregate_tests.rs`), which include this file with `#[path]` (test code
//! only; no crate depends on another for it).
//!
//! Three tests, each at significance α (false-failure probability α for samples that really
//! are N(0, σ²)):
//! - Kolmogorov–Smirnov against the N(0, σ²) CDF, with Stephens' finite-n modification
//!   √n + 0.12 + 0.11/√n and the critical value solved from the asymptotic Kolmogorov tail
//!   P(K > x) = 2 Σ (−1)^(k−1) e^(−2k²x²);
//! - variance: Σx²/σ² is χ² with n degrees of freedom (the mean is known to be 0); its
//!   Wilson–Hilferty transform ((S/n)^(1/3) − (1 − 2/(9n))) / √(2/(9n)) is close to N(0, 1);
//! - mean: √n·x̄/σ is N(0, 1).
//!
//! By the union bound all three pass together with probability at least 1 − 3α. The tests use
//! fixed seeds, so they are deterministic; the stated rate is what a *random* seed would give.

#![allow(dead_code)]

/// Standard normal CDF Φ(x), by Marsaglia's series Φ(x) = ½ + φ(x)·Σ x^(2k+1)/(1·3·…·(2k+1)),
/// which converges for every x; absolute error below 1e-15 for |x| ≤ 9, and |x| > 9 returns
/// 0 or 1 (the true tail is below 1e-18).
pub fn normal_cdf(x: f64) -> f64 {
    if x < -9.0 {
        return 0.0;
    }
    if x > 9.0 {
        return 1.0;
    }
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut denominator = 1.0;
    while term.abs() > 1e-18 * sum.abs() {
        denominator += 2.0;
        term *= x2 / denominator;
        sum += term;
    }
    let density = (-x2 / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    0.5 + sum * density
}

/// Asymptotic Kolmogorov tail P(K > x).
pub fn kolmogorov_tail(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let mut total = 0.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let sign = if k % 2.0 == 1.0 { 1.0 } else { -1.0 };
        total += sign * (-2.0 * k * k * x * x).exp();
    }
    (2.0 * total).clamp(0.0, 1.0)
}

/// Solves `tail(x) = alpha` for a decreasing `tail` on [0, 40] by bisection.
fn solve_decreasing(tail: impl Fn(f64) -> f64, alpha: f64) -> f64 {
    let (mut low, mut high) = (0.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (low + high);
        if tail(mid) > alpha {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// x with P(K > x) = alpha (1.3581 for α = 0.05).
pub fn kolmogorov_critical(alpha: f64) -> f64 {
    solve_decreasing(kolmogorov_tail, alpha)
}

/// z with P(|Z| > z) = alpha for Z ~ N(0, 1) (1.9600 for α = 0.05).
pub fn normal_two_sided_critical(alpha: f64) -> f64 {
    solve_decreasing(|z| 2.0 * normal_cdf(-z), alpha)
}

/// The three statistics and their critical values.
#[derive(Debug)]
pub struct NormalityCheck {
    /// Stephens-modified KS statistic (√n + 0.12 + 0.11/√n)·D.
    pub ks: f64,
    pub ks_critical: f64,
    /// Wilson–Hilferty z of Σx²/σ².
    pub variance_z: f64,
    /// √n·x̄/σ.
    pub mean_z: f64,
    pub z_critical: f64,
}

impl NormalityCheck {
    /// Runs the three tests of `samples` against N(0, `sigma`²) at significance `alpha` each.
    pub fn run(samples: &[f64], sigma: f64, alpha: f64) -> Self {
        assert!(samples.len() > 100 && sigma > 0.0, "need samples and σ > 0");
        let n = samples.len() as f64;
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut d = 0.0f64;
        for (i, x) in sorted.iter().enumerate() {
            let f = normal_cdf(x / sigma);
            let below = i as f64 / n;
            let above = (i + 1) as f64 / n;
            d = d.max(above - f).max(f - below);
        }
        let root_n = n.sqrt();
        let chi2 = samples.iter().map(|x| (x / sigma).powi(2)).sum::<f64>();
        let shrink = 2.0 / (9.0 * n);
        let variance_z = ((chi2 / n).cbrt() - (1.0 - shrink)) / shrink.sqrt();
        let mean = samples.iter().sum::<f64>() / n;
        NormalityCheck {
            ks: d * (root_n + 0.12 + 0.11 / root_n),
            ks_critical: kolmogorov_critical(alpha),
            variance_z,
            mean_z: mean * root_n / sigma,
            z_critical: normal_two_sided_critical(alpha),
        }
    }

    pub fn ks_passes(&self) -> bool {
        self.ks <= self.ks_critical
    }

    pub fn variance_passes(&self) -> bool {
        self.variance_z.abs() <= self.z_critical
    }

    pub fn mean_passes(&self) -> bool {
        self.mean_z.abs() <= self.z_critical
    }

    pub fn passes(&self) -> bool {
        self.ks_passes() && self.variance_passes() && self.mean_passes()
    }
}

#[test]
fn normal_cdf_and_critical_values_match_tables() {
    for (x, expected) in [
        (0.0, 0.5),
        (1.0, 0.841_344_746_068_542_9),
        (-1.959_963_984_540_054, 0.025),
        (-3.0, 0.001_349_898_031_630_093_3),
        (-6.0, 9.865_876_450_376_946e-10),
        (2.5, 0.993_790_334_674_223_8),
    ] {
        let got = normal_cdf(x);
        assert!(
            (got - expected).abs() < 1e-13,
            "Φ({x}) = {got}, expected {expected}"
        );
    }
    assert!((kolmogorov_critical(0.05) - 1.358_1).abs() < 1e-4);
    assert!((kolmogorov_critical(0.01) - 1.627_6).abs() < 1e-4);
    assert!((kolmogorov_critical(1e-6) - 2.693_386).abs() < 1e-5);
    assert!((normal_two_sided_critical(0.05) - 1.959_964).abs() < 1e-6);
    assert!((normal_two_sided_critical(1e-6) - 4.891_638).abs() < 1e-5);
}
