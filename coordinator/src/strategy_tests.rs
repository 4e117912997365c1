use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::*;
use crate::aggregate::{ClipAction, DpFedAvg};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + b.abs())
}

#[test]
fn adam_and_yogi_steps_follow_reddi_et_al_by_hand() {
    // Two steps on three parameters, written out without the implementation's loop.
    let deltas = [[0.5f32, -0.02, 0.0], [0.1f32, 0.3, -0.4]];
    for optimizer in [ServerOptimizer::Adam, ServerOptimizer::Yogi] {
        let eta = 0.05f32;
        let mut params = vec![1.0f32, 2.0, -3.0];
        let mut moments = Moments::fresh(3);
        let (mut x, mut m, mut v) = ([1.0f64, 2.0, -3.0], [0.0f64; 3], [TAU * TAU; 3]);
        for delta in &deltas {
            server_step(optimizer, eta, &mut params, delta, &mut moments)
                .unwrap_or_else(|e| panic!("{e}"));
            for i in 0..3 {
                let d = f64::from(delta[i]);
                m[i] = 0.9 * m[i] + 0.1 * d;
                v[i] = match optimizer {
                    ServerOptimizer::Adam => 0.99 * v[i] + 0.01 * d * d,
                    ServerOptimizer::Yogi => {
                        let s = (v[i] - d * d).signum() * f64::from(u8::from(v[i] != d * d));
                        v[i] - 0.01 * d * d * s
                    }
                };
                x[i] += 0.05 * m[i] / (v[i].sqrt() + 1e-3);
                // f32 rounding of the stored state: compare relative to the value's size.
                m[i] = f64::from(m[i] as f32);
                v[i] = f64::from(v[i] as f32);
            }
            for i in 0..3 {
                assert!(
                    close(f64::from(params[i]), x[i]),
                    "{optimizer:?} x[{i}]: {} vs {}",
                    params[i],
                    x[i]
                );
                assert!(close(f64::from(moments.first[i]), m[i]));
                assert!(close(f64::from(moments.second[i]), v[i]));
            }
        }
    }
}

#[test]
fn the_first_adam_step_moves_each_coordinate_by_about_eta_unless_tau_damps_it() {
    // Step = η·0.1d / (√(0.99τ² + 0.01d²) + τ): about η once |d| ≫ 10τ, whatever d's scale;
    // far below η for |d| ≪ 10τ (τ keeps near-zero pseudo-gradients from being amplified).
    for (scale, range) in [
        (0.1f32, 0.004..=0.01f32),
        (1.0, 0.009..=0.01),
        (1e3, 0.0099..=0.01),
        (1e-4, 0.0..=0.0002),
    ] {
        let mut params = vec![0.0f32; 4];
        let delta = [scale, -scale, 2.0 * scale, -0.5 * scale];
        let mut moments = Moments::fresh(4);
        server_step(
            ServerOptimizer::Adam,
            0.01,
            &mut params,
            &delta,
            &mut moments,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for (p, d) in params.iter().zip(delta) {
            assert_eq!(p.signum(), d.signum());
            assert!(range.contains(&p.abs()), "scale {scale}: step {p}");
        }
    }
}

#[test]
fn server_steps_refuse_bad_input_and_leave_everything_as_it_was() {
    let mut params = vec![1.0f32; 3];
    let mut moments = Moments::fresh(3);
    let before = (params.clone(), moments.clone());
    let mut fails = |lr: f32, delta: &[f32], moments: &mut Moments| {
        server_step(ServerOptimizer::Adam, lr, &mut params, delta, moments).is_err()
    };
    assert!(fails(0.01, &[0.0; 2], &mut moments), "short delta");
    assert!(fails(0.0, &[0.0; 3], &mut moments), "zero learning rate");
    assert!(
        fails(f32::NAN, &[0.0; 3], &mut moments),
        "NaN learning rate"
    );
    let mut corrupt = Moments::fresh(3);
    corrupt.second[1] = -1.0;
    assert!(
        fails(0.01, &[0.0; 3], &mut corrupt),
        "negative second moment"
    );
    corrupt.second[1] = 1.0;
    corrupt.first[0] = f32::INFINITY;
    assert!(
        fails(0.01, &[0.0; 3], &mut corrupt),
        "infinite first moment"
    );
    let mut short = Moments::fresh(2);
    assert!(fails(0.01, &[0.0; 3], &mut short), "short moments");
    assert_eq!((params, moments), before);
}

#[test]
fn median_and_trimmed_mean_of_small_columns_are_exact() {
    let deltas: Vec<Vec<f32>> = [5.0f32, -1.0, 3.0, 100.0, 2.0]
        .iter()
        .zip([0.0f32, 0.0, 0.0, 0.0, 1.0])
        .map(|(&a, b)| vec![a, b])
        .collect();
    assert_eq!(coordinate_median(&deltas).ok(), Some(vec![3.0, 0.0]));
    assert_eq!(coordinate_median(&deltas[..4]).ok(), Some(vec![4.0, 0.0]));
    // β = 0.2 of 5 drops one at each end: mean of {2, 3, 5} and of {0, 0, 0}.
    let trimmed = trimmed_mean(&deltas, 0.2).unwrap_or_else(|e| panic!("{e}"));
    assert!((trimmed[0] - 10.0 / 3.0).abs() < 1e-6 && trimmed[1] == 0.0);
    // β = 0 is the plain mean; β just under ½ of 5 is the median.
    let mean = trimmed_mean(&deltas, 0.0).unwrap_or_else(|e| panic!("{e}"));
    assert!((mean[0] - 109.0 / 5.0).abs() < 1e-5 && (mean[1] - 0.2).abs() < 1e-7);
    assert_eq!(trimmed_mean(&deltas, 0.49).ok(), Some(vec![3.0, 0.0]));
    assert_eq!(trimmed_per_side(4, 0.49), 1);
    assert_eq!(trimmed_per_side(1, 0.49), 0);
}

#[test]
fn robust_aggregates_refuse_bad_input() {
    assert!(coordinate_median(&[]).is_err());
    assert!(trimmed_mean(&[], 0.1).is_err());
    let ragged = vec![vec![1.0f32, 2.0], vec![1.0]];
    assert!(coordinate_median(&ragged).is_err());
    assert!(trimmed_mean(&ragged, 0.1).is_err());
    let nan = vec![vec![1.0f32, 2.0], vec![1.0, f32::NAN]];
    assert!(coordinate_median(&nan).is_err());
    assert!(trimmed_mean(&nan, 0.1).is_err());
    let fine = vec![vec![1.0f32], vec![2.0]];
    for beta in [0.5f32, -0.1, f32::NAN, 1.0] {
        assert!(trimmed_mean(&fine, beta).is_err(), "β = {beta}");
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    dot / (crate::aggregate::l2_norm(a) * crate::aggregate::l2_norm(b))
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn median_and_trimmed_mean_resist_poisoned_updates_that_drag_fedavg_backwards() {
    // 10 honest stores send the true direction plus their own noise; 3 attackers send the
    // opposite direction at the full clip norm, which the coordinator's clip check accepts.
    let (p, clip) = (2_000usize, 2.0f32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let truth: Vec<f32> = (0..p)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let scale = 0.3 / crate::aggregate::l2_norm(&truth) as f32;
    let truth: Vec<f32> = truth.iter().map(|t| t * scale).collect();
    let mut deltas: Vec<Vec<f32>> = (0..10)
        .map(|_| {
            truth
                .iter()
                .map(|t| t + 0.001 * rng.sample::<f32, _>(StandardNormal))
                .collect()
        })
        .collect();
    let attack_scale = -0.999 * clip / crate::aggregate::l2_norm(&truth) as f32;
    for _ in 0..3 {
        deltas.push(truth.iter().map(|t| t * attack_scale).collect());
    }

    let mut sum = DpFedAvg::new(p);
    for delta in &deltas {
        let action = sum
            .add_clipped(delta, clip)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(action, ClipAction::Added { .. }),
            "every delta is within C: {action:?}"
        );
    }
    let fedavg = sum
        .finish_with_noise_std(
            0.0,
            deltas.len() as f64,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let median = coordinate_median(&deltas).unwrap_or_else(|e| panic!("{e}"));
    let trimmed = trimmed_mean(&deltas, 0.25).unwrap_or_else(|e| panic!("{e}"));

    let size = crate::aggregate::l2_norm(&truth);
    assert!(
        cosine(&fedavg, &truth) < 0.0,
        "FedAvg should be dragged backwards: cosine {}",
        cosine(&fedavg, &truth)
    );
    for (name, robust) in [("median", &median), ("trimmed mean", &trimmed)] {
        let (cos, off) = (cosine(robust, &truth), distance(robust, &truth) / size);
        assert!(cos > 0.99, "{name}: cosine with the truth {cos}");
        assert!(off < 0.1, "{name}: relative error {off}");
    }
    eprintln!(
        "cosine with the honest direction: FedAvg {:.3}, median {:.3}, trimmed mean {:.3}",
        cosine(&fedavg, &truth),
        cosine(&median, &truth),
        cosine(&trimmed, &truth)
    );
}
