//! Unit tests of the accountant's public API.

use super::*;

fn event(q: f64, z: f64, rounds: u64) -> DpEvent {
    DpEvent {
        sampling_rate: q,
        noise_multiplier: z,
        rounds,
    }
}

const DELTA: f64 = 1e-5;

#[test]
fn invalid_inputs_are_errors_with_lowercase_messages() {
    let bad_events = [
        event(f64::NAN, 1.0, 1),
        event(-0.1, 1.0, 1),
        event(1.5, 1.0, 1),
        event(0.1, f64::NAN, 1),
        event(0.1, -1.0, 1),
        event(0.1, f64::INFINITY, 1),
    ];
    for bad in bad_events {
        for result in [
            compute_epsilon(&[bad], DELTA).map(|r| r.epsilon),
            rdp_epsilon(&[bad], DELTA).map(|r| r.0),
            pld_epsilon(&[bad], DELTA),
            rounds_remaining(&[], bad, 1.0, DELTA).map(|k| k as f64),
            rounds_remaining(&[bad], event(0.1, 1.0, 1), 1.0, DELTA).map(|k| k as f64),
        ] {
            let err = result.expect_err("invalid event accepted");
            let message = err.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(
                matches!(
                    err,
                    AccountingError::InvalidSamplingRate(_)
                        | AccountingError::InvalidNoiseMultiplier(_)
                ),
                "{err:?}"
            );
        }
    }
    let ok = [event(0.1, 1.0, 10)];
    for delta in [0.0, 1.0, -1e-5, f64::NAN, 2.0] {
        assert!(matches!(
            compute_epsilon(&ok, delta),
            Err(AccountingError::InvalidDelta(_))
        ));
        assert!(matches!(
            rdp_epsilon(&ok, delta),
            Err(AccountingError::InvalidDelta(_))
        ));
        assert!(matches!(
            pld_epsilon(&ok, delta),
            Err(AccountingError::InvalidDelta(_))
        ));
    }
    for budget in [f64::NAN, -0.5] {
        let err = rounds_remaining(&ok, ok[0], budget, DELTA).expect_err("bad budget");
        assert!(
            matches!(err, AccountingError::InvalidEpsilonBudget(_)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("epsilon budget must be a number >= 0, got {budget}")
        );
    }
}

#[test]
fn no_cost_events_give_zero() {
    for events in [
        vec![],
        vec![event(0.0, 1.0, 100)],
        vec![event(0.3, 1.0, 0)],
        vec![event(0.0, 0.0, 100), event(0.5, 0.0, 0)],
    ] {
        let report = compute_epsilon(&events, DELTA).expect("valid");
        assert_eq!(report.epsilon, 0.0, "{events:?}");
        assert_eq!(report.rdp_epsilon, 0.0);
        assert_eq!(report.pld_epsilon, Some(0.0));
    }
}

#[test]
fn no_noise_gives_infinity() {
    let report =
        compute_epsilon(&[event(0.01, 1.0, 10), event(0.2, 0.0, 1)], DELTA).expect("valid");
    assert_eq!(report.epsilon, f64::INFINITY);
    assert_eq!(report.rdp_epsilon, f64::INFINITY);
    assert_eq!(report.pld_epsilon, Some(f64::INFINITY));
    assert_eq!(
        rounds_remaining(&[], event(0.2, 0.0, 1), 1e6, DELTA).expect("valid"),
        0
    );
}

#[test]
fn more_rounds_cost_more() {
    let mut last = (0.0, 0.0, 0.0);
    for rounds in [1, 10, 100, 1000, 5000] {
        let r = compute_epsilon(&[event(0.02, 1.1, rounds)], DELTA).expect("valid");
        let now = (r.epsilon, r.rdp_epsilon, r.pld_epsilon.expect("pld"));
        assert!(
            now.0 > last.0 && now.1 > last.1 && now.2 > last.2,
            "{rounds}: {now:?}"
        );
        last = now;
    }
}

#[test]
fn more_noise_costs_less() {
    let mut last = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for z in [0.6, 0.8, 1.0, 1.5, 3.0, 10.0] {
        let r = compute_epsilon(&[event(0.05, z, 200)], DELTA).expect("valid");
        let now = (r.epsilon, r.rdp_epsilon, r.pld_epsilon.expect("pld"));
        assert!(
            now.0 < last.0 && now.1 < last.1 && now.2 < last.2,
            "{z}: {now:?}"
        );
        last = now;
    }
}

#[test]
fn smaller_delta_costs_more_and_pld_is_tighter_than_rdp() {
    let events = [event(0.01, 1.0, 1000)];
    let loose = compute_epsilon(&events, 1e-5).expect("valid");
    let strict = compute_epsilon(&events, 1e-9).expect("valid");
    assert!(strict.epsilon > loose.epsilon);
    for r in [&loose, &strict] {
        let pld_eps = r.pld_epsilon.expect("pld");
        assert!(pld_eps < r.rdp_epsilon);
        assert_eq!(r.epsilon, pld_eps);
        assert!(r.rdp_order > 1.0);
    }
}

#[test]
fn equal_events_compose_like_one_event() {
    let split = [
        event(0.03, 0.9, 120),
        event(0.03, 0.9, 80),
        event(0.03, 0.9, 0),
    ];
    let whole = [event(0.03, 0.9, 200)];
    assert_eq!(
        compute_epsilon(&split, DELTA).expect("valid"),
        compute_epsilon(&whole, DELTA).expect("valid")
    );
}

#[test]
fn convolution_of_kinds_agrees_with_one_kind() {
    // Two kinds that differ only in the last bit of z go through the convolution path; their
    // composition must match the merged self-composition.
    let z = 1.2_f64;
    let nudged = f64::from_bits(z.to_bits() + 1);
    let split = [event(0.05, z, 300), event(0.05, nudged, 200)];
    let whole = [event(0.05, z, 500)];
    let a = pld_epsilon(&split, DELTA).expect("valid");
    let b = pld_epsilon(&whole, DELTA).expect("valid");
    assert!((a / b - 1.0).abs() < 1e-6, "{a} vs {b}");
    let (ra, _) = rdp_epsilon(&split, DELTA).expect("valid");
    let (rb, _) = rdp_epsilon(&whole, DELTA).expect("valid");
    assert!((ra / rb - 1.0).abs() < 1e-9, "{ra} vs {rb}");
}

#[test]
fn heterogeneous_composition_costs_at_least_each_part() {
    let a = event(0.01, 1.0, 400);
    let b = event(0.2, 2.5, 50);
    let both = compute_epsilon(&[a, b], DELTA).expect("valid").epsilon;
    let only_a = compute_epsilon(&[a], DELTA).expect("valid").epsilon;
    let only_b = compute_epsilon(&[b], DELTA).expect("valid").epsilon;
    assert!(
        both > only_a && both > only_b,
        "{both} vs {only_a}, {only_b}"
    );
    assert!(both < only_a + only_b, "{both} vs {only_a} + {only_b}");
}

#[test]
fn full_sampling_is_never_below_the_exact_gaussian_value() {
    for (z, rounds) in [(0.7, 3), (1.3, 50), (4.0, 2000)] {
        let exact = gaussian::exact_gaussian_epsilon(z, rounds, DELTA);
        let r = compute_epsilon(&[event(1.0, z, rounds)], DELTA).expect("valid");
        let pld_eps = r.pld_epsilon.expect("pld");
        assert!(
            pld_eps >= exact && pld_eps <= exact * 1.01,
            "{z} {rounds}: {pld_eps} vs {exact}"
        );
        assert!(r.rdp_epsilon >= exact);
        assert!(r.epsilon >= exact);
    }
}

#[test]
fn oversized_pld_falls_back_to_rdp() {
    // Noise this small needs a loss grid far beyond the limits even at the coarsest interval.
    let events = [event(1.0, 0.001, 10)];
    let err = pld_epsilon(&events, DELTA).expect_err("too large");
    assert!(
        matches!(err, AccountingError::PldTooLarge { .. }),
        "{err:?}"
    );
    let report = compute_epsilon(&events, DELTA).expect("valid");
    assert_eq!(report.pld_epsilon, None);
    assert_eq!(report.epsilon, report.rdp_epsilon);
    assert!(report.epsilon.is_finite() && report.epsilon > 1e5);

    let many: Vec<DpEvent> = (0..=pld::MAX_KINDS)
        .map(|i| event(0.01, 1.0 + i as f64 * 0.01, 1))
        .collect();
    let err = pld_epsilon(&many, DELTA).expect_err("too many kinds");
    assert!(
        matches!(err, AccountingError::TooManyKinds { .. }),
        "{err:?}"
    );
    assert_eq!(
        compute_epsilon(&many, DELTA).expect("valid").pld_epsilon,
        None
    );
}

#[test]
fn coarser_grid_is_used_when_needed_and_stays_valid() {
    // z = 0.05 needs a loss range of about 500 per round: a grid of 1e-4 would not fit.
    let events = [event(1.0, 0.05, 2)];
    let (epsilons, interval) = pld::pld_epsilons(&events, &[DELTA]).expect("fits");
    assert!(interval > pld::DEFAULT_INTERVAL);
    let exact = gaussian::exact_gaussian_epsilon(0.05, 2, DELTA);
    assert!(
        epsilons[0] >= exact && epsilons[0] <= exact * 1.01,
        "{epsilons:?} vs {exact}"
    );
}

fn with(history: &[DpEvent], next: DpEvent, k: u64) -> Vec<DpEvent> {
    let mut events = history.to_vec();
    events.push(DpEvent {
        rounds: next.rounds * k,
        ..next
    });
    events
}

#[test]
fn rounds_remaining_is_the_boundary_of_compute_epsilon() {
    let history = [event(0.02, 1.0, 300), event(0.1, 3.0, 20)];
    let next = event(0.02, 1.0, 1);
    let budget = 3.0;
    let k = rounds_remaining(&history, next, budget, DELTA).expect("valid");
    assert!(k > 0 && k < MAX_ROUNDS_REMAINING, "{k}");
    let at = compute_epsilon(&with(&history, next, k), DELTA).expect("valid");
    let past = compute_epsilon(&with(&history, next, k + 1), DELTA).expect("valid");
    assert!(at.epsilon <= budget, "{at:?}");
    assert!(past.epsilon > budget, "{past:?}");
    // The PLD refinement allows more rounds than RDP alone would.
    let rdp_only = (0..=k).rev().find(|&j| {
        rdp_epsilon(&with(&history, next, j), DELTA)
            .expect("valid")
            .0
            <= budget
    });
    assert!(rdp_only.is_some_and(|j| j < k), "{rdp_only:?} vs {k}");
}

#[test]
fn rounds_remaining_edge_cases() {
    let next = event(0.05, 1.0, 1);
    // The history alone exceeds the budget.
    assert_eq!(
        rounds_remaining(&[event(1.0, 0.5, 10)], next, 1.0, DELTA).expect("ok"),
        0
    );
    // A single round already exceeds it.
    assert_eq!(
        rounds_remaining(&[], event(1.0, 0.5, 1), 1.0, DELTA).expect("ok"),
        0
    );
    // A round without cost never exhausts the budget.
    let free = event(0.0, 1.0, 1);
    assert_eq!(
        rounds_remaining(&[], free, 1.0, DELTA).expect("ok"),
        MAX_ROUNDS_REMAINING
    );
    // A budget of zero allows nothing that costs.
    assert_eq!(rounds_remaining(&[], next, 0.0, DELTA).expect("ok"), 0);
    // Events of several rounds count as units.
    let k1 = rounds_remaining(&[], event(0.05, 1.0, 1), 2.0, DELTA).expect("ok");
    let k5 = rounds_remaining(&[], event(0.05, 1.0, 5), 2.0, DELTA).expect("ok");
    assert_eq!(k5, k1 / 5, "{k1} {k5}");
}
