//! Sensitivities, noise calibration and suppression of metric releases.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::camera::{ClosedWindow, SLOT_EMPTY, SLOT_STOCKED, WindowAggregator};
use crate::release::{ReleaseError, ReleasePolicy, ShelfMetric, calibrate, release_window};

/// A frame's slot states, or `None` for a skipped frame (no inference).
type Frame = Option<Vec<u8>>;

/// The window that a sequence of frames (all inside one window) closes into.
fn aggregate(frames: &[Frame]) -> ClosedWindow {
    let mut agg = WindowAggregator::new(0, 3600);
    for (t, frame) in frames.iter().enumerate() {
        match frame {
            Some(states) => {
                agg.observe(i64::try_from(t).expect("small"), states);
            }
            None => agg.forget_previous(),
        }
    }
    agg.current().cloned().unwrap_or(ClosedWindow {
        camera_id: 0,
        window_start_unix: 0,
        window_secs: 3600,
        frames: 0,
        slot_observations: 0,
        empty_slot_observations: 0,
        out_of_stock_events: 0,
    })
}

fn random_frame(rng: &mut StdRng, slots: usize, p_empty: f64) -> Vec<u8> {
    (0..slots)
        .map(|_| {
            if rng.random_bool(p_empty) {
                SLOT_EMPTY
            } else {
                SLOT_STOCKED
            }
        })
        .collect()
}

fn assert_within_sensitivity(a: &ClosedWindow, b: &ClosedWindow, slots: usize, context: &str) {
    for metric in ShelfMetric::ALL {
        let change = metric.count(a).abs_diff(metric.count(b));
        let bound = metric.count_sensitivity(slots as u64);
        assert!(
            change <= bound,
            "{} changed by {change} > {bound} ({context})",
            metric.name()
        );
    }
}

/// Property: adding or removing any one frame of any sequence never moves a metric's raw count by
/// more than its declared sensitivity. 3000 random sequences (seeded), with skipped frames, all
/// slot counts 1..=8 and empty probabilities from 0 to 1; every frame is removed in turn and a
/// random frame is inserted at a random place.
#[test]
fn one_frame_never_moves_a_metric_by_more_than_its_sensitivity() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut tight = [false; 3];
    for case in 0..3000 {
        let slots = rng.random_range(1..=8);
        let p_empty = rng.random_range(0.0..=1.0);
        let len = rng.random_range(1..40);
        let frames: Vec<Frame> = (0..len)
            .map(|_| (!rng.random_bool(0.1)).then(|| random_frame(&mut rng, slots, p_empty)))
            .collect();
        let full = aggregate(&frames);
        for removed in 0..frames.len() {
            if frames[removed].is_none() {
                continue;
            }
            let mut fewer = frames.clone();
            fewer.remove(removed);
            let neighbour = aggregate(&fewer);
            assert_within_sensitivity(&full, &neighbour, slots, &format!("case {case}"));
            for (i, metric) in ShelfMetric::ALL.into_iter().enumerate() {
                tight[i] |= metric.count(&full).abs_diff(metric.count(&neighbour))
                    == metric.count_sensitivity(slots as u64);
            }
        }
        let mut more = frames.clone();
        let at = rng.random_range(0..=more.len());
        more.insert(at, Some(random_frame(&mut rng, slots, p_empty)));
        assert_within_sensitivity(&full, &aggregate(&more), slots, &format!("case {case} +1"));
    }
    // The bounds are reached, so they are not loose guesses.
    assert_eq!(tight, [true; 3], "some sensitivity was never attained");
}

#[test]
fn a_longer_window_has_the_same_sensitivity() {
    // All-empty after all-stocked frames: removing the one empty frame after a stocked one
    // moves empties and events by S however many frames the window holds.
    for len in [2usize, 10, 200] {
        let slots = 6;
        let mut frames: Vec<Frame> = vec![Some(vec![SLOT_STOCKED; slots]); len - 1];
        frames.push(Some(vec![SLOT_EMPTY; slots]));
        let full = aggregate(&frames);
        let fewer = aggregate(&frames[..len - 1]);
        assert_eq!(full.out_of_stock_events - fewer.out_of_stock_events, 6);
        assert_eq!(
            full.empty_slot_observations - fewer.empty_slot_observations,
            6
        );
    }
}

fn window(frames: u64, events: u64, empty: u64) -> ClosedWindow {
    ClosedWindow {
        camera_id: 1,
        window_start_unix: 7200,
        window_secs: 3600,
        frames,
        slot_observations: frames * 12,
        empty_slot_observations: empty,
        out_of_stock_events: events,
    }
}

fn policy(rho: f64, suppress_below: u64) -> ReleasePolicy {
    ReleasePolicy {
        rho_per_release: rho,
        suppress_below,
        slots: 12,
        seconds_per_frame: 300,
    }
}

#[test]
fn noised_counts_below_the_threshold_are_suppressed() {
    // ρ = 10⁶ makes the noise scale ~0.002 counts: the discrete Gaussian then returns exactly 0
    // except with probability below e^-100000, so the outcome is deterministic.
    let release = release_window(&window(3, 50, 4), &policy(1e6, 5)).expect("release");
    let by_name = |name: &str| {
        release
            .metrics
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .expect("metric")
    };
    let frames = by_name("frames");
    assert!(frames.suppressed && frames.value.is_none(), "{frames:?}");
    let events = by_name("out_of_stock_events");
    assert_eq!((events.suppressed, events.value), (false, Some(50.0)));
    let minutes = by_name("out_of_stock_minutes");
    assert!(minutes.suppressed && minutes.value.is_none(), "{minutes:?}");
    // Just at the threshold is released: 5 empties × 5 minutes.
    let release = release_window(&window(5, 0, 5), &policy(1e6, 5)).expect("release");
    assert_eq!(release.metrics[2].value, Some(25.0));
    assert!(release.metrics[1].suppressed, "0 events < 5");
    // Suppression spends nothing: the release costs what its noise costs.
    assert_eq!(release.rho, 1e6);
}

/// The noise has the declared scale. 20 000 releases of one window: the sample variance of a
/// Gaussian has relative standard error sqrt(2 / (n - 1)) ≈ 1.0 %, so a 5 % band is 5 standard
/// errors wide (two-sided false-failure rate ≈ 6e-7 per metric, ~2e-6 for the three); the mean
/// must lie within 5 standard errors of the true value (same rate). The discrete Gaussian's
/// variance differs from scale² by far less than 0.1 % at these scales (≥ 7).
#[test]
fn noise_matches_the_declared_scale() {
    let truth = window(10_000, 100_000, 100_000);
    let policy = policy(0.04, 5);
    let n = 20_000;
    let mut samples: Vec<Vec<f64>> = (0..3).map(|_| Vec::with_capacity(n)).collect();
    let mut declared = [0.0; 3];
    for _ in 0..n {
        let release = release_window(&truth, &policy).expect("release");
        for (i, (metric, noised)) in ShelfMetric::ALL.iter().zip(&release.metrics).enumerate() {
            assert_eq!(noised.name, metric.name());
            let unit = metric.unit(300);
            let value = noised.value.expect("large counts are never suppressed");
            samples[i].push(value / unit - metric.count(&truth) as f64);
            declared[i] = noised.noise_scale / unit;
        }
    }
    // S = 12: frames get 0.2 ρ with sensitivity 1, the others 0.4 ρ with sensitivity 12.
    let expected = [
        1.0 / (2.0 * 0.2 * 0.04f64).sqrt(),
        12.0 / (2.0 * 0.4 * 0.04f64).sqrt(),
        12.0 / (2.0 * 0.4 * 0.04f64).sqrt(),
    ];
    for i in 0..3 {
        assert!(
            (declared[i] / expected[i] - 1.0).abs() < 1e-6,
            "{declared:?}"
        );
        let mean = samples[i].iter().sum::<f64>() / n as f64;
        let variance =
            samples[i].iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        let ratio = variance / (declared[i] * declared[i]);
        assert!(
            (ratio - 1.0).abs() < 0.05,
            "{}: variance / scale² = {ratio}",
            ShelfMetric::ALL[i].name()
        );
        assert!(
            mean.abs() < 5.0 * declared[i] / (n as f64).sqrt(),
            "{}: biased noise, mean {mean}",
            ShelfMetric::ALL[i].name()
        );
    }
}

#[test]
fn the_certified_cost_never_exceeds_the_charge() {
    for rho in [1e-4, 0.01, 0.04, 1.0 / 3.0, 0.5, 7.0] {
        for slots in [1, 12, 4096] {
            let (scales, certified) = calibrate(rho, slots).expect("calibrates");
            assert!(certified <= rho, "{certified} > {rho}");
            assert!(certified >= rho * (1.0 - 1e-6), "{certified} wastes budget");
            assert!(scales.iter().all(|s| *s > 0.0));
        }
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(calibrate(bad, 12), Err(ReleaseError::Policy(_))));
    }
    assert!(matches!(calibrate(0.1, 0), Err(ReleaseError::Policy(_))));
}
