//! Hockey-stick divergences of the (subsampled) Gaussian mechanism, from normal tails.
//!
//! Notation: σ is the noise multiplier (sensitivity 1), μ = 1/σ. With `P = (1−q)·N(0,σ²) +
//! q·N(1,σ²)` (the output with the participant, who is sampled with probability q) and
//! `Q = N(0,σ²)` (without), the two directions of the add-or-remove relation are
//! `δ_remove(ε) = H_{e^ε}(P‖Q)` and `δ_add(ε) = H_{e^ε}(Q‖P)`, where
//! `H_γ(A‖B) = ∫ (a − γ·b)₊`. The privacy loss `ln(p/q)` is monotone in the output, so each
//! divergence is a difference of two normal tails; both reduce to the divergence of the plain
//! Gaussian mechanism `δ_gauss(ε; μ) = Φ̄(ε/μ − μ/2) − e^ε Φ̄(ε/μ + μ/2)` (Balle & Wang 2018,
//! Theorem 8) at a transformed ε:
//!
//! * remove: `δ_remove(ε) = q · δ_gauss(ε′)` with `e^{ε′} = 1 + (e^ε − 1)/q`, and
//!   `δ_remove(ε) = 1 − e^ε` when `e^ε ≤ 1 − q` (the loss never goes below `ln(1 − q)`);
//! * add: `δ_add(ε) = q · e^{ε − ε″} · δ_gauss(ε″)` with `e^{−ε″} = 1 + (e^{−ε} − 1)/q`, and
//!   `δ_add(ε) = 0` when `ε ≥ −ln(1 − q)` (the loss never exceeds it).
//!
//! Special functions come from `libm` (fdlibm's `erfc`, accurate to about one ulp until it
//! underflows near 26.5); beyond that the log-tail uses the standard asymptotic series.

/// `ln(1/√(2π))`.
#[cfg(test)]
const LN_INV_SQRT_2PI: f64 = -0.918_938_533_204_672_8;
/// `ln √π`.
const LN_SQRT_PI: f64 = 0.572_364_942_924_700_1;

/// `ln erfc(x)`, accurate in the far right tail where `erfc` itself underflows.
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x < 26.0 {
        return libm::erfc(x).ln();
    }
    // erfc(x) = e^{−x²}/(x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) + 105/(16x⁸) − …); at x ≥ 26
    // the first omitted term is below 3e-13.
    let w = 1.0 / (2.0 * x * x);
    let series = 1.0 - w * (1.0 - 3.0 * w * (1.0 - 5.0 * w * (1.0 - 7.0 * w)));
    -x * x - x.ln() - LN_SQRT_PI + series.ln()
}

/// Upper tail of the standard normal, `Φ̄(t) = P(N(0,1) > t)`.
pub(crate) fn normal_sf(t: f64) -> f64 {
    0.5 * libm::erfc(t * std::f64::consts::FRAC_1_SQRT_2)
}

/// `ln Φ̄(t)`, finite for every finite `t`.
pub(crate) fn log_normal_sf(t: f64) -> f64 {
    log_erfc(t * std::f64::consts::FRAC_1_SQRT_2) - std::f64::consts::LN_2
}

/// `ln φ(t)` of the standard normal density.
#[cfg(test)]
pub(crate) fn log_normal_pdf(t: f64) -> f64 {
    LN_INV_SQRT_2PI - 0.5 * t * t
}

/// Hockey-stick divergence `H_{e^ε}(N(μ,1) ‖ N(0,1))` of the Gaussian mechanism with
/// sensitivity-to-noise ratio `mu > 0`. `+∞` gives 0, `−∞` gives 1.
pub(crate) fn gaussian_delta(epsilon: f64, mu: f64) -> f64 {
    if epsilon == f64::INFINITY {
        return 0.0;
    }
    if epsilon == f64::NEG_INFINITY {
        return 1.0;
    }
    let a = epsilon / mu - 0.5 * mu;
    let b = epsilon / mu + 0.5 * mu;
    let delta = normal_sf(a) - (epsilon + log_normal_sf(b)).exp();
    delta.clamp(0.0, 1.0)
}

/// `ln(1 + (e^x − 1)/q)` for `0 < q ≤ 1` and `e^x > 1 − q`, without overflow for large `x`.
fn log_amplified(x: f64, q: f64) -> f64 {
    if q == 1.0 {
        x
    } else if x <= 1.0 {
        (x.exp_m1() / q).ln_1p()
    } else {
        x - q.ln() + (-(1.0 - q) * (-x).exp()).ln_1p()
    }
}

/// `δ_remove(ε)` for sampling rate `0 < q ≤ 1` and noise multiplier `sigma > 0` (see the
/// module docs).
pub(crate) fn remove_delta(epsilon: f64, q: f64, sigma: f64) -> f64 {
    if epsilon == f64::INFINITY {
        return 0.0;
    }
    if q < 1.0 && epsilon.exp_m1() / q <= -1.0 {
        return -epsilon.exp_m1();
    }
    (q * gaussian_delta(log_amplified(epsilon, q), 1.0 / sigma)).clamp(0.0, 1.0)
}

/// `δ_add(ε)` for sampling rate `0 < q ≤ 1` and noise multiplier `sigma > 0` (see the module
/// docs). Equals [`remove_delta`] when `q == 1`.
pub(crate) fn add_delta(epsilon: f64, q: f64, sigma: f64) -> f64 {
    if q == 1.0 {
        return remove_delta(epsilon, q, sigma);
    }
    if epsilon == f64::INFINITY || (-epsilon).exp_m1() / q <= -1.0 {
        return 0.0;
    }
    if epsilon == f64::NEG_INFINITY {
        return 1.0;
    }
    let eps_u = -log_amplified(-epsilon, q);
    let inner = gaussian_delta(eps_u, 1.0 / sigma);
    if inner == 0.0 {
        return 0.0;
    }
    (q * (epsilon - eps_u).exp() * inner).clamp(0.0, 1.0)
}

/// Privacy loss `ln(p(x)/q(x))` of the remove direction at output `x` (increasing in `x`);
/// the add direction's loss at `x` is its negation.
pub(crate) fn remove_loss(x: f64, q: f64, sigma: f64) -> f64 {
    let v = (2.0 * x - 1.0) / (2.0 * sigma * sigma);
    if q == 1.0 {
        return v;
    }
    let (a, b) = ((-q).ln_1p(), q.ln() + v);
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// Smallest `ε ≥ 0` with `delta_of(ε) ≤ delta` for a non-increasing `delta_of`, by bracketing
/// and bisection to a relative precision of about 1e-12. Returns `+∞` if none exists below
/// 1e6.
#[cfg(test)]
pub(crate) fn invert_delta(delta_of: impl Fn(f64) -> f64, delta: f64) -> f64 {
    if delta_of(0.0) <= delta {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while delta_of(hi) > delta {
        lo = hi;
        hi *= 2.0;
        if hi > 1e6 {
            return f64::INFINITY;
        }
    }
    while hi - lo > 1e-12 * hi.max(1e-6) {
        let mid = 0.5 * (lo + hi);
        if delta_of(mid) > delta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// Exact ε of `rounds` compositions of the (unsampled) Gaussian mechanism with noise
/// multiplier `sigma`: a `T`-fold composition is one Gaussian mechanism with `μ = √T/σ`
/// (Dong, Roth & Su 2019), whose exact δ(ε) is [`gaussian_delta`]. Used to check the
/// accountants where an exact answer exists.
#[cfg(test)]
pub(crate) fn exact_gaussian_epsilon(sigma: f64, rounds: u64, delta: f64) -> f64 {
    let mu = (rounds as f64).sqrt() / sigma;
    invert_delta(|eps| gaussian_delta(eps, mu), delta)
}

/// Exact ε of one round of the Poisson-subsampled Gaussian mechanism: the larger of the two
/// directions' exact inverses.
#[cfg(test)]
pub(crate) fn exact_single_round_epsilon(q: f64, sigma: f64, delta: f64) -> f64 {
    let remove = invert_delta(|eps| remove_delta(eps, q, sigma), delta);
    let add = invert_delta(|eps| add_delta(eps, q, sigma), delta);
    remove.max(add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_erfc_is_continuous_at_the_switch_to_the_asymptotic_series() {
        // erfc(26) ≈ 5.7e-296 is still representable: both forms must agree there.
        let direct = libm::erfc(26.0).ln();
        let series = log_erfc(26.0);
        assert!(
            (direct - series).abs() < 1e-12 * direct.abs(),
            "{direct} vs {series}"
        );
        assert!(log_erfc(25.9) > log_erfc(26.0) && log_erfc(26.0) > log_erfc(26.1));
        assert!(log_erfc(100.0).is_finite());
    }

    #[test]
    fn gaussian_delta_matches_a_direct_integral() {
        // δ(ε) = ∫ (φ(x−μ) − e^ε φ(x))₊ dx by the midpoint rule on a fine grid.
        let (mu, eps) = (1.3_f64, 0.7_f64);
        let h = 1e-4;
        let mut total = 0.0;
        let mut x = -12.0;
        while x < 14.0 {
            let m = x + 0.5 * h;
            let d = log_normal_pdf(m - mu).exp() - eps.exp() * log_normal_pdf(m).exp();
            total += d.max(0.0) * h;
            x += h;
        }
        let got = gaussian_delta(eps, mu);
        assert!((got - total).abs() < 1e-8, "{got} vs {total}");
    }

    #[test]
    fn subsampled_deltas_match_direct_integrals() {
        let (q, sigma) = (0.2_f64, 0.9_f64);
        let dens_p = |x: f64| {
            (1.0 - q) * log_normal_pdf(x / sigma).exp() / sigma
                + q * log_normal_pdf((x - 1.0) / sigma).exp() / sigma
        };
        let dens_q = |x: f64| log_normal_pdf(x / sigma).exp() / sigma;
        for eps in [-0.1_f64, 0.0, 0.3, 1.5] {
            let h = 1e-4;
            let (mut rem, mut add) = (0.0, 0.0);
            let mut x = -12.0;
            while x < 13.0 {
                let m = x + 0.5 * h;
                rem += (dens_p(m) - eps.exp() * dens_q(m)).max(0.0) * h;
                add += (dens_q(m) - eps.exp() * dens_p(m)).max(0.0) * h;
                x += h;
            }
            let (got_rem, got_add) = (remove_delta(eps, q, sigma), add_delta(eps, q, sigma));
            assert!(
                (got_rem - rem).abs() < 1e-8,
                "remove at {eps}: {got_rem} vs {rem}"
            );
            assert!(
                (got_add - add).abs() < 1e-8,
                "add at {eps}: {got_add} vs {add}"
            );
        }
    }
}
