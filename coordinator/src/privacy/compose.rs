//! Composition of discrete privacy-loss distributions: FFT powers and convolutions, with tail
//! truncation that only ever moves mass towards larger losses.
//!
//! Why the result stays an upper bound: the hockey-stick divergence of a discrete PLD,
//! `δ(ε) = m_∞ + Σ_l m_l (1 − e^{ε−l})₊`, grows when mass is added or moved to a larger loss,
//! and convolution keeps both kinds of change. So (1) a lower tail folded into the lowest kept
//! bucket, (2) an upper tail moved to `+∞`, (3) the mass that a cyclic FFT wraps around into
//! the window (never negative), and (4) a bound on the mass outside a Chernoff window added to
//! `+∞` all leave an upper bound. Rounding noise of the FFT (about 1e-16 of the largest mass)
//! is clipped at zero.

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

/// A discrete privacy-loss distribution on the grid `loss = (lo + i)·interval`, plus a mass at
/// `+∞`. The grid interval is kept by the caller.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pmf {
    /// Grid index of `probs[0]`.
    pub lo: i64,
    /// Masses at consecutive grid points.
    pub probs: Vec<f64>,
    /// Mass at `+∞` (privacy loss unbounded; counts fully towards δ).
    pub infinity_mass: f64,
}

/// Smallest `2^a·3^b ≥ n`, sizes for which rustfft is fast.
fn fast_len(n: usize) -> usize {
    let mut best = n.next_power_of_two();
    let mut three = 1_usize;
    while three < best {
        let candidate = three * n.div_ceil(three).next_power_of_two();
        best = best.min(candidate);
        three *= 3;
    }
    best
}

/// `ln Σ_i p_i e^{λ(i − anchor)}`, summed outwards from `anchor` (0 or the last index) so
/// that every weight is at most 1; stops once the weights are negligible and adds a bound on
/// the rest, so the result never falls below the true value.
fn log_mgf(probs: &[f64], lambda: f64) -> f64 {
    let n = probs.len();
    let step = (-lambda.abs()).exp();
    let mut sum = 0.0;
    let mut weight = 1.0;
    for k in 0..n {
        let p = if lambda > 0.0 {
            probs[n - 1 - k]
        } else {
            probs[k]
        };
        if k % 256 == 0 {
            weight = (-lambda.abs() * k as f64).exp();
            if sum > 0.0 && weight < 1e-30 * sum {
                sum += weight; // bound on the remaining terms (masses sum to at most 1)
                break;
            }
        }
        sum += p * weight;
        weight *= step;
    }
    let anchor = if lambda > 0.0 { (n - 1) as f64 } else { 0.0 };
    sum.ln() + lambda * anchor
}

/// Window `[lo, hi]` of the sum of `rounds` independent indices drawn from `probs` outside of
/// which at most `tail` mass lies (half on each side), by Chernoff bounds over a grid of
/// exponents around the Gaussian optimum.
fn chernoff_window(probs: &[f64], rounds: u64, tail: f64) -> (f64, f64) {
    let t = rounds as f64;
    let n = probs.len();
    let (mut lo, mut hi) = (0.0, t * (n - 1) as f64);
    let total: f64 = probs.iter().sum();
    if total <= 0.0 || n == 1 {
        return (lo, hi);
    }
    let mean = probs
        .iter()
        .enumerate()
        .map(|(i, p)| i as f64 * p)
        .sum::<f64>()
        / total;
    let var = probs
        .iter()
        .enumerate()
        .map(|(i, p)| (i as f64 - mean).powi(2) * p)
        .sum::<f64>()
        / total;
    let log_term = (2.0 / tail).ln();
    let best = (2.0 * log_term / t).sqrt() / var.sqrt().max(0.5);
    for k in -16..=16 {
        let lambda = best * 2f64.powf(f64::from(k) / 3.0);
        let up = (t * log_mgf(probs, lambda) + log_term) / lambda;
        if up.is_finite() {
            hi = f64::min(hi, up.ceil());
        }
        let down = (t * log_mgf(probs, -lambda) + log_term) / -lambda;
        if down.is_finite() {
            lo = f64::max(lo, down.floor());
        }
    }
    (lo, hi.max(lo))
}

/// Truncates both tails, each by at most `tail / 2`: the lower tail is folded into the lowest
/// kept bucket and the upper tail moved to `+∞`.
pub(crate) fn trim(pmf: &mut Pmf, tail: f64) {
    let half = 0.5 * tail;
    let mut cut_lo = 0;
    let mut low_mass = 0.0;
    while cut_lo + 1 < pmf.probs.len() && low_mass + pmf.probs[cut_lo] <= half {
        low_mass += pmf.probs[cut_lo];
        cut_lo += 1;
    }
    let mut keep_hi = pmf.probs.len();
    let mut high_mass = 0.0;
    while keep_hi > cut_lo + 1 && high_mass + pmf.probs[keep_hi - 1] <= half {
        high_mass += pmf.probs[keep_hi - 1];
        keep_hi -= 1;
    }
    pmf.probs.truncate(keep_hi);
    pmf.probs.drain(..cut_lo);
    if let Some(first) = pmf.probs.first_mut() {
        *first += low_mass;
    }
    pmf.lo += cut_lo as i64;
    pmf.infinity_mass += high_mass;
}

/// Error: the operation would need this many grid points, more than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge(pub u64);

/// FFT-based composition; keeps one planner so that transforms of a size are planned once.
pub(crate) struct Composer {
    planner: FftPlanner<f64>,
}

impl std::fmt::Debug for Composer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Composer")
    }
}

impl Composer {
    pub(crate) fn new() -> Self {
        Self {
            planner: FftPlanner::new(),
        }
    }

    fn forward(&mut self, buf: &mut [Complex<f64>]) {
        self.planner.plan_fft_forward(buf.len()).process(buf);
    }

    /// Inverse transform, normalised, as `conj(FFT(conj(x)))/n` so only forward plans are made.
    fn inverse(&mut self, buf: &mut [Complex<f64>]) {
        for c in buf.iter_mut() {
            *c = c.conj();
        }
        self.forward(buf);
        let scale = 1.0 / buf.len() as f64;
        for c in buf.iter_mut() {
            *c = c.conj() * scale;
        }
    }

    /// The `rounds`-fold composition of `pmf` with one FFT: transform, raise every coefficient to
    /// the power `rounds`, transform back. The FFT spans a Chernoff window holding all but `tail`
    /// mass; that bound is added to `+∞`. Fails when the window exceeds `max_len` grid points.
    pub(crate) fn self_compose(
        &mut self,
        pmf: &Pmf,
        rounds: u64,
        tail: f64,
        max_len: usize,
    ) -> Result<Pmf, TooLarge> {
        if rounds <= 1 {
            return Ok(pmf.clone());
        }
        let (w_lo, w_hi) = chernoff_window(&pmf.probs, rounds, tail);
        let len_f = w_hi - w_lo + 1.0;
        if len_f > max_len as f64 {
            return Err(TooLarge(len_f.min(u64::MAX as f64) as u64));
        }
        let len = len_f as usize;
        let size = fast_len(len.max(1));
        let mut buf = vec![Complex::new(0.0, 0.0); size];
        for (i, &p) in pmf.probs.iter().enumerate() {
            buf[i % size].re += p;
        }
        self.forward(&mut buf);
        // Rounds are capped far below u32::MAX by the caller; repeated squaring keeps the
        // relative error near rounds × 1e-16 on coefficients of modulus ≤ 1.
        let power = u32::try_from(rounds).unwrap_or(u32::MAX);
        for c in &mut buf {
            *c = c.powu(power);
        }
        self.inverse(&mut buf);
        let start = (w_lo as u64 % size as u64) as usize;
        let probs = (0..len)
            .map(|j| buf[(start + j) % size].re.max(0.0))
            .collect();
        let survive = (rounds as f64 * (-pmf.infinity_mass).ln_1p()).exp();
        let mut out = Pmf {
            lo: pmf.lo * rounds as i64 + w_lo as i64,
            probs,
            infinity_mass: (1.0 - survive + tail).min(1.0),
        };
        trim(&mut out, tail);
        Ok(out)
    }

    /// The composition of two PLDs (linear convolution by FFT), then [`trim`] by `tail`.
    pub(crate) fn convolve(
        &mut self,
        a: &Pmf,
        b: &Pmf,
        tail: f64,
        max_len: usize,
    ) -> Result<Pmf, TooLarge> {
        let len = a.probs.len() + b.probs.len() - 1;
        if len > max_len {
            return Err(TooLarge(len as u64));
        }
        let size = fast_len(len);
        let load = |probs: &[f64]| {
            let mut buf = vec![Complex::new(0.0, 0.0); size];
            for (slot, &p) in buf.iter_mut().zip(probs) {
                slot.re = p;
            }
            buf
        };
        let mut fa = load(&a.probs);
        let mut fb = load(&b.probs);
        self.forward(&mut fa);
        self.forward(&mut fb);
        for (x, y) in fa.iter_mut().zip(&fb) {
            *x *= y;
        }
        self.inverse(&mut fa);
        let probs = fa[..len].iter().map(|c| c.re.max(0.0)).collect();
        let mut out = Pmf {
            lo: a.lo + b.lo,
            probs,
            infinity_mass: a.infinity_mass + b.infinity_mass - a.infinity_mass * b.infinity_mass,
        };
        trim(&mut out, tail);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct_convolve(a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; a.len() + b.len() - 1];
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                out[i + j] += x * y;
            }
        }
        out
    }

    fn sample_pmf() -> Pmf {
        let raw: Vec<f64> = (0..40).map(|i| ((i as f64 - 12.0) / 5.0).powi(2)).collect();
        let weights: Vec<f64> = raw.iter().map(|r| (-r).exp()).collect();
        let total: f64 = weights.iter().sum();
        Pmf {
            lo: -7,
            probs: weights.iter().map(|w| w * 0.999 / total).collect(),
            infinity_mass: 0.001,
        }
    }

    #[test]
    fn fast_len_is_smooth_and_large_enough() {
        for n in [1, 2, 5, 17, 100, 1000, 4097, 1 << 20] {
            let m = fast_len(n);
            assert!(m >= n);
            let mut r = m;
            while r.is_multiple_of(2) {
                r /= 2;
            }
            while r.is_multiple_of(3) {
                r /= 3;
            }
            assert_eq!(r, 1, "{m}");
            assert!(m < 2 * n + 2, "{n} -> {m}");
        }
    }

    #[test]
    fn self_composition_matches_repeated_direct_convolution() {
        let pmf = sample_pmf();
        let mut direct = pmf.probs.clone();
        for _ in 1..7 {
            direct = direct_convolve(&direct, &pmf.probs);
        }
        let got = Composer::new()
            .self_compose(&pmf, 7, 1e-30, 1 << 20)
            .expect("fits");
        let offset = (got.lo - 7 * pmf.lo) as usize;
        for (k, &p) in got.probs.iter().enumerate() {
            assert!((p - direct[offset + k]).abs() < 1e-15, "bucket {k}");
        }
        let kept: f64 = got.probs.iter().sum();
        assert!((kept + got.infinity_mass - 1.0).abs() < 1e-12);
        assert!((got.infinity_mass - (1.0 - 0.999f64.powi(7))).abs() < 1e-12);
    }

    #[test]
    fn convolution_matches_direct_and_truncation_moves_mass_up() {
        let a = sample_pmf();
        let b = Pmf {
            lo: 3,
            ..sample_pmf()
        };
        let got = Composer::new()
            .convolve(&a, &b, 1e-6, 1 << 20)
            .expect("fits");
        let direct = direct_convolve(&a.probs, &b.probs);
        let offset = (got.lo - a.lo - b.lo) as usize;
        let low: f64 = direct[..=offset].iter().sum();
        assert!((got.probs[0] - low).abs() < 1e-14);
        for k in 1..got.probs.len() {
            assert!((got.probs[k] - direct[offset + k]).abs() < 1e-15);
        }
        let total: f64 = got.probs.iter().sum::<f64>() + got.infinity_mass;
        assert!((total - 1.0).abs() < 1e-12);
        assert!(got.infinity_mass >= a.infinity_mass + b.infinity_mass - 1e-6);
    }
}
