//! Rényi-DP bound of the Poisson-subsampled Gaussian mechanism and its conversion to (ε, δ).
//!
//! For order α the Rényi divergence of the sampled Gaussian mechanism under add-or-remove is
//! `ε_α = ln(A_α)/(α − 1)` with `A_α = E_{x∼Q}[(p(x)/q(x))^α]`, `P = (1−q)N(0,σ²) + qN(1,σ²)`,
//! `Q = N(0,σ²)` — the larger of the two directions (Mironov, Talwar & Zhang 2019, Theorem 5).
//!
//! * Integer α: the binomial expansion is exact,
//!   `A_α = Σ_{i=0}^{α} C(α,i) q^i (1−q)^{α−i} e^{(i²−i)/(2σ²)}`.
//! * Fractional α: split the integral at `z₀ = σ² ln(1/q − 1) + ½` where the two mixture
//!   components are equal and expand each side in a convergent generalised binomial series
//!   (MTZ 2019, §3.3). Each term is an integral of a Gaussian over a half-line (an `erfc`)
//!   times `C(α, i)`, whose sign alternates once `i > α`. We sum the terms with their signs,
//!   which is exact (dp-accounting adds absolute values, an upper bound that can be loose:
//!   by 1–70 % in ε_α for q ≥ 0.1, see the quadrature checks in `vector_tests.rs`). The
//!   series decays only polynomially for large `i`, so after at most
//!   [`MAX_SERIES_TERMS`] terms beyond the point where the terms start to fall we add a
//!   rigorous bound on the rest: with `Φ̄(u) ≤ φ(u)/u` every remaining term of either series
//!   is at most `K·|C(α,i)|/(i − c)` with `K = (1−q)^α e^{−z₀²/(2σ²)} σ/√(2π)`, and for
//!   `N > α` the identity `Σ_{i≥N} |C(α,i)| = |C(α−1, N−1)|` sums them. So the result is
//!   always an upper bound (exact up to that remainder); dp-accounting instead drops an order
//!   whose series has not converged after 1000 terms.
//! * `q = 1` is the plain Gaussian mechanism, `ε_α = α/(2σ²)`; `q = 0` costs nothing;
//!   `σ = 0` gives `+∞`.
//!
//! All sums are taken in log space (log-sum-exp). Orders are those of dp-accounting's
//! `RdpAccountant` by default (`1.1, 1.2, …, 10.9, 11, 12, …, 63, 128, 256, 512, 1024`).
//! The conversion is Canonne, Kamath & Steinke 2020, Proposition 12 (also Asoodeh et al.
//! 2020): `ε = ε_α + ln(1 − 1/α) − (ln δ + ln α)/(α − 1)` for α > 1.01, together with the
//! bound `δ ≤ √(1 − e^{−ε_α})` at ε = 0 (KL divergence ≤ Rényi divergence); the smallest
//! ε over all orders is reported.

use super::gaussian::log_erfc;

/// Number of terms summed past the point where the fractional series starts to fall before
/// the remainder is replaced by its bound.
pub(crate) const MAX_SERIES_TERMS: usize = 2_000;

/// The Rényi orders: dp-accounting's `DEFAULT_RDP_ORDERS`.
pub(crate) fn orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// `ln(e^a + e^b)`.
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// Rényi divergence of order `alpha` of one round with sampling rate `q` and noise
/// multiplier `sigma` (both validated by the caller).
pub(crate) fn rdp_one_round(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if sigma == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_integer(q, sigma, alpha)
    } else {
        log_a_fractional(q, sigma, alpha)
    };
    // A_α ≥ 1 by Jensen; rounding can leave a tiny negative logarithm.
    (log_a / (alpha - 1.0)).max(0.0)
}

fn log_a_integer(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (ln_q, ln_1mq) = (q.ln(), (-q).ln_1p());
    let two_var = 2.0 * sigma * sigma;
    let mut log_binom = 0.0; // ln C(α, i)
    let mut total = f64::NEG_INFINITY;
    let mut i = 0.0_f64;
    while i <= alpha {
        let term = log_binom + i * ln_q + (alpha - i) * ln_1mq + (i * i - i) / two_var;
        total = log_add(total, term);
        log_binom += (alpha - i).ln() - (i + 1.0).ln();
        i += 1.0;
    }
    total
}

fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (ln_q, ln_1mq) = (q.ln(), (-q).ln_1p());
    let two_var = 2.0 * sigma * sigma;
    let scale = std::f64::consts::SQRT_2 * sigma;
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    // Past `first_tail_index` the tail bound's conditions hold (N > α, N > z₀, N > α − z₀).
    let first_tail_index = (alpha.max(z0).max(alpha - z0).ceil() + 1.0).max(1.0) as usize;
    let ln_k =
        alpha * ln_1mq - z0 * z0 / two_var + sigma.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();

    // Terms carry the sign of C(α, i); positive and negative parts are summed separately.
    let (mut positive, mut negative) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let mut log_binom = 0.0; // ln |C(α, i)|
    let mut sign_positive = true; // sign of C(α, i)
    let mut log_binom_m1 = 0.0; // ln |C(α − 1, i − 1)| once i ≥ 1
    let (mut last0, mut last1) = (f64::INFINITY, f64::INFINITY);
    let mut i = 0_usize;
    loop {
        let fi = i as f64;
        let j = alpha - fi;
        let t0 = log_binom + fi * ln_q + j * ln_1mq;
        let t1 = log_binom + j * ln_q + fi * ln_1mq;
        let e0 = log_erfc((fi - z0) / scale) - std::f64::consts::LN_2;
        let e1 = log_erfc((z0 - j) / scale) - std::f64::consts::LN_2;
        let s0 = t0 + (fi * fi - fi) / two_var + e0;
        let s1 = t1 + (j * j - j) / two_var + e1;
        let both = log_add(s0, s1);
        if sign_positive {
            positive = log_add(positive, both);
        } else {
            negative = log_add(negative, both);
        }
        let falling = s0 < last0 && s1 < last1;
        (last0, last1) = (s0, s1);

        // Advance the binomial coefficients to index i + 1.
        log_binom += (alpha - fi).abs().ln() - (fi + 1.0).ln();
        if alpha - fi < 0.0 {
            sign_positive = !sign_positive;
        }
        if i >= 1 {
            log_binom_m1 += (alpha - fi).abs().ln() - fi.ln();
        }
        i += 1;

        if i >= first_tail_index && falling {
            // Bound on the absolute values of all terms with index ≥ i (both series).
            let n = i as f64;
            let tail = ln_k + log_binom_m1 + log_add(-(n - z0).ln(), -(n - alpha + z0).ln());
            let partial = if positive > negative {
                positive + (-(negative - positive).exp()).ln_1p()
            } else {
                f64::NEG_INFINITY
            };
            if tail < partial - 40.0 || i >= first_tail_index + MAX_SERIES_TERMS {
                // A_α ≥ 1; should cancellation ever leave less, fall back to absolute values.
                let base = if partial >= 0.0 {
                    partial
                } else {
                    log_add(positive, negative)
                };
                return log_add(base, tail);
            }
        }
    }
}

/// Rényi divergences at [`orders`] of the composition of `events` (validated by the caller):
/// the per-round values times the number of rounds, summed over events.
pub(crate) fn rdp_curve(events: &[super::DpEvent], orders: &[f64]) -> Vec<f64> {
    let mut total = vec![0.0; orders.len()];
    for event in events {
        if event.rounds == 0 || event.sampling_rate == 0.0 {
            continue;
        }
        for (sum, &alpha) in total.iter_mut().zip(orders) {
            *sum += event.rounds as f64
                * rdp_one_round(event.sampling_rate, event.noise_multiplier, alpha);
        }
    }
    total
}

/// Smallest ε over `orders` for which the Rényi divergences `rdp` give (ε, δ)-DP, and the
/// order that attains it (the first order when every bound is infinite).
pub(crate) fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(f64::NAN));
    for (&alpha, &r) in orders.iter().zip(rdp) {
        let epsilon = if r.is_nan() || r == f64::INFINITY {
            f64::INFINITY
        } else if delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if alpha > 1.01 {
            r + (-1.0 / alpha).ln_1p() - ((delta * alpha).ln()) / (alpha - 1.0)
        } else {
            f64::INFINITY
        };
        if epsilon < best.0 {
            best = (epsilon, alpha);
        }
    }
    (best.0.max(0.0), best.1)
}
