//! The budget rule: a round starts only if the lineage's ε, with that round included, stays
//! within the lineage's ε_max at its δ. The ledger (`ledger.rs`) makes the check atomic; this
//! module computes it and words the refusal an ML engineer sees.

use crate::error::{CoordinatorError, Result};
use crate::ledger::Budget;
use crate::privacy::{DpEvent, compute_epsilon, rounds_remaining};

/// ε of `history` plus `next` at the budget's δ; refuses when it would exceed ε_max. Returns
/// `None` when ε is infinite (no noise), which only a lineage without a budget accepts.
/// Blocking (PLD composition): call from a blocking thread.
pub fn admit(
    lineage: &str,
    budget: &Budget,
    history: &[DpEvent],
    next: DpEvent,
) -> Result<Option<f64>> {
    let mut events = history.to_vec();
    events.push(next);
    let report = compute_epsilon(&events, budget.delta)
        .map_err(|e| CoordinatorError::InvalidArgument(format!("privacy accounting: {e}")))?;
    let epsilon = report.epsilon.is_finite().then_some(report.epsilon);
    let Some(epsilon_max) = budget.epsilon_max else {
        return Ok(epsilon);
    };
    if report.epsilon <= epsilon_max {
        return Ok(epsilon);
    }
    let spent = compute_epsilon(history, budget.delta)
        .map(|r| r.epsilon)
        .unwrap_or(f64::INFINITY);
    let remaining = rounds_remaining(history, next, epsilon_max, budget.delta).unwrap_or(0);
    let why = if next.noise_multiplier == 0.0 {
        "the round adds no noise (noise_multiplier 0), so its ε is infinite".to_owned()
    } else {
        format!(
            "this round would raise it to ε = {}",
            format_epsilon(report.epsilon)
        )
    };
    Err(CoordinatorError::FailedPrecondition(format!(
        "privacy budget of lineage {lineage} exceeded: ε spent is {} of ε_max = {} at δ = {:e}, \
         and {why}; {remaining} more round(s) fit with sampling rate {:.4} and noise multiplier \
         {} (raise the noise multiplier, lower the sampling rate, or start a new lineage)",
        format_epsilon(spent),
        format_epsilon(epsilon_max),
        budget.delta,
        next.sampling_rate,
        format_multiplier(next.noise_multiplier),
    )))
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
pub fn sampling_plan(target_clients: u32, overselect: f32, online_now: usize) -> (f64, f64) {
    let target = f64::from(target_clients.max(1));
    let population = (online_now as f64).max(target);
    let q = (f64::from(overselect.max(1.0)) * target / population).min(1.0);
    (q, q * population)
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
