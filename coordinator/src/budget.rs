//! The budget rule: a round starts only if the lineage's ε, with that round included, stays
//! within the lineage's ε_max at its δ. The ledger (`ledger.rs`) makes the check atomic; this
//! module computes it and words the refusal an ML engineer sees.

use crate::error::{CoordinatorError, Result};
use crate::ledger::Budget;
use crate::privacy::{DpEvent, compute_epsilon, rounds_remaining};

/// Why a round was refused: enough to word the refusal after the admission transaction ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub history: Vec<DpEvent>,
    pub next: DpEvent,
    /// ε the lineage would reach with the round (infinite without noise).
    pub would_reach: f64,
}

/// ε of `history` plus `next` at the budget's δ: `Ok(Ok(ε))` to admit (`None` when infinite,
/// which only a lineage without a budget accepts), `Ok(Err(refusal))` when it would exceed
/// ε_max. Blocking (PLD composition, well under a second): runs inside the admission
/// transaction, so it does only this; [`refusal_message`] does the slower rest afterwards.
pub fn decide(
    budget: &Budget,
    history: &[DpEvent],
    next: DpEvent,
) -> Result<std::result::Result<Option<f64>, Refusal>> {
    let mut events = history.to_vec();
    events.push(next);
    let report = compute_epsilon(&events, budget.delta)
        .map_err(|e| CoordinatorError::InvalidArgument(format!("privacy accounting: {e}")))?;
    let epsilon = report.epsilon.is_finite().then_some(report.epsilon);
    match budget.epsilon_max {
        Some(epsilon_max) if report.epsilon > epsilon_max => Ok(Err(Refusal {
            history: history.to_vec(),
            next,
            would_reach: report.epsilon,
        })),
        _ => Ok(Ok(epsilon)),
    }
}

/// The refusal an ML engineer sees: ε spent, what the round would cost, and how many rounds
/// of this kind still fit. Blocking (it searches the rounds left): call from a blocking thread,
/// outside any transaction.
pub fn refusal_message(lineage: &str, budget: &Budget, refusal: &Refusal) -> String {
    let epsilon_max = budget.epsilon_max.unwrap_or(f64::INFINITY);
    let next = refusal.next;
    let spent = if refusal.history.is_empty() {
        0.0
    } else {
        compute_epsilon(&refusal.history, budget.delta)
            .map(|r| r.epsilon)
            .unwrap_or(f64::INFINITY)
    };
    let remaining =
        rounds_remaining(&refusal.history, next, epsilon_max, budget.delta).unwrap_or(0);
    let why = if next.noise_multiplier == 0.0 {
        "the round adds no noise (noise_multiplier 0), so its ε is infinite".to_owned()
    } else {
        format!(
            "this round would raise it to ε = {}",
            format_epsilon(refusal.would_reach)
        )
    };
    format!(
        "privacy budget of lineage {lineage} exceeded: ε spent is {} of ε_max = {} at δ = {:e}, \
         and {why}; {remaining} more round(s) fit with sampling rate {:.4} and noise multiplier \
         {} (raise the noise multiplier, lower the sampling rate, or start a new lineage)",
        format_epsilon(spent),
        format_epsilon(epsilon_max),
        budget.delta,
        next.sampling_rate,
        format_multiplier(next.noise_multiplier),
    )
}

/// [`decide`] and, on refusal, [`refusal_message`] as a `FailedPrecondition` error.
/// Blocking: call from a blocking thread.
pub fn admit(
    lineage: &str,
    budget: &Budget,
    history: &[DpEvent],
    next: DpEvent,
) -> Result<Option<f64>> {
    decide(budget, history, next)?.map_err(|refusal| {
        CoordinatorError::FailedPrecondition(refusal_message(lineage, budget, &refusal))
    })
}

/// A noise multiplier as the engineer typed it: round specs carry f32, so print at f32
/// precision ("0.01", not "0.009999999776482582"). The accountant uses the exact value.
pub fn format_multiplier(noise_multiplier: f64) -> String {
    format!("{}", noise_multiplier as f32)
}

/// ε with four significant digits, "∞" when infinite.
pub fn format_epsilon(epsilon: f64) -> String {
    if epsilon.is_infinite() {
        "∞".to_owned()
    } else if epsilon >= 1000.0 {
        format!("{epsilon:.0}")
    } else {
        format!("{epsilon:.4}")
    }
}

/// The Poisson sampling rate and the fixed DP-FedAvg denominator of a round about to start:
/// q = min(1, overselect × target / N) with N = max(stores online now, target), and the expected
/// number of contributors q × N. With fewer stores online than the target, q = 1.
///
/// q is rounded *up* to two significant digits (conservative): rounds then share a few
/// distinct rates, which keeps the PLD accountant's composition small (it composes one PLD per
/// distinct (q, z)).
pub fn sampling_plan(target_clients: u32, overselect: f32, online_now: usize) -> (f64, f64) {
    let target = f64::from(target_clients.max(1));
    let population = (online_now as f64).max(target);
    let q = round_up_two_digits(f64::from(overselect.max(1.0)) * target / population).min(1.0);
    (q, q * population)
}

/// `x` rounded up to two significant decimal digits (0.01234 → 0.013), for x in (0, 1].
fn round_up_two_digits(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return x;
    }
    let scale = 10f64.powi(1 - x.log10().floor() as i32);
    let scaled = x * scale;
    // Values already on the grid (up to float noise) stay where they are.
    let up = if (scaled - scaled.round()).abs() < 1e-9 {
        scaled.round()
    } else {
        scaled.ceil()
    };
    up / scale
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn sampling_plan_uses_the_online_population() {
        assert_eq!(sampling_plan(3, 1.0, 3), (1.0, 3.0));
        assert_eq!(sampling_plan(3, 1.0, 0), (1.0, 3.0));
        let (q, expected) = sampling_plan(10, 1.0, 1000);
        assert!((q - 0.01).abs() < 1e-12 && (expected - 10.0).abs() < 1e-9);
        let (q, expected) = sampling_plan(10, 1.5, 1000);
        assert!((q - 0.015).abs() < 1e-12 && (expected - 15.0).abs() < 1e-9);
        // Rounded up to two digits, never down: 10/813 = 0.01230… → 0.013.
        let (q, _) = sampling_plan(10, 1.0, 813);
        assert!((q - 0.013).abs() < 1e-12, "{q}");
        let (q, _) = sampling_plan(7, 1.0, 9);
        assert!((q - 0.78).abs() < 1e-12, "{q}");
    }

    #[test]
    fn admits_within_budget_and_refuses_beyond_with_the_rounds_left() {
        let budget = Budget {
            epsilon_max: Some(2.0),
            delta: 1e-5,
        };
        let next = DpEvent {
            sampling_rate: 0.1,
            noise_multiplier: 1.0,
            rounds: 1,
        };
        let first = admit("l", &budget, &[], next);
        assert!(
            matches!(first, Ok(Some(e)) if e > 0.0 && e <= 2.0),
            "{first:?}"
        );
        let history = [DpEvent {
            rounds: 10_000,
            ..next
        }];
        let refused = admit("l", &budget, &history, next);
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("privacy budget of lineage l exceeded"),
            "{message}"
        );
        assert!(message.contains("0 more round(s) fit"), "{message}");
    }

    #[test]
    fn no_noise_needs_a_lineage_without_budget() {
        let next = DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: 0.0,
            rounds: 1,
        };
        let limited = Budget {
            epsilon_max: Some(10.0),
            delta: 1e-5,
        };
        let message = admit("l", &limited, &[], next)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("infinite"), "{message}");
        let unlimited = Budget {
            epsilon_max: None,
            delta: 1e-5,
        };
        assert!(matches!(admit("l", &unlimited, &[], next), Ok(None)));
    }
}
