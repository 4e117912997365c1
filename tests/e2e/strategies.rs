//! Aggregation strategies through real rounds: FedAdam publishes base + η·m/(√v + τ) and carries
//! its moments from one round to the next; the median publishes base + the coordinate-wise
//! median of the stored clipped deltas; FedProx's proximal term shrinks the stores' drift; a
//! robust strategy with noise is refused at launch.

use backroom_proto::v1 as pb;

use crate::support::{
    params_of, round_updates, run_round, sandbox, shutdown, spec, wait_installed,
};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.99;
const TAU: f64 = 1e-3;

fn deltas_of(sandbox: &backroom::sandbox::Sandbox, round_id: &str) -> Vec<Vec<f32>> {
    let updates = round_updates(sandbox, round_id);
    assert_eq!(updates.len(), 3, "one stored update per node");
    updates.into_iter().map(|(_, d)| d).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).abs() / (1.0 + w.abs()))
        .fold(0.0f64, f64::max);
    assert!(worst <= 1e-5, "{what}: off by {worst} (relative)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedadam_carries_its_moments_and_the_median_is_exact() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = sandbox(dir.path(), 3).await;
    wait_installed(&sandbox, 1).await;
    let eta = 0.02f32;
    let adam = pb::RoundSpec {
        strategy: "fedadam".into(),
        server_learning_rate: Some(eta),
        ..spec(3, 0.0)
    };

    // Two FedAdam rounds without noise: the test replays Reddi et al.'s update from the stored
    // deltas, the second round continuing from the first's moments.
    let mut x: Vec<f64> = params_of(&sandbox, 1)
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    let n = x.len();
    let (mut m, mut v) = (vec![0.0f64; n], vec![TAU * TAU; n]);
    for version in [2u64, 3] {
        let round = run_round(&mut sandbox, adam.clone()).await;
        assert_eq!(round.published_version, version);
        assert_eq!(
            round.spec.as_ref().and_then(|s| s.server_learning_rate),
            Some(eta)
        );
        let deltas = deltas_of(&sandbox, &round.round_id);
        for i in 0..n {
            let d = deltas.iter().map(|d| f64::from(d[i])).sum::<f64>() / 3.0;
            m[i] = BETA1 * m[i] + (1.0 - BETA1) * d;
            v[i] = BETA2 * v[i] + (1.0 - BETA2) * d * d;
            x[i] += f64::from(eta) * m[i] / (v[i].sqrt() + TAU);
            m[i] = f64::from(m[i] as f32);
            v[i] = f64::from(v[i] as f32);
        }
        assert_close(
            &format!("FedAdam v{version}"),
            &params_of(&sandbox, version),
            &x,
        );
        for which in ["m", "v"] {
            let path = sandbox
                .coordinator_dir
                .join("blobs/moments")
                .join(&sandbox.lineage)
                .join(format!("v{version}-{which}.safetensors"));
            assert!(path.is_file(), "{} is missing", path.display());
        }
        wait_installed(&sandbox, version).await;
    }

    // The median of three deltas is, coordinate by coordinate, the middle one.
    let round = run_round(
        &mut sandbox,
        pb::RoundSpec {
            strategy: "median".into(),
            ..spec(3, 0.0)
        },
    )
    .await;
    assert_eq!(round.published_version, 4);
    let deltas = deltas_of(&sandbox, &round.round_id);
    let base = params_of(&sandbox, 3);
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let mut column = [deltas[0][i], deltas[1][i], deltas[2][i]];
            column.sort_by(f32::total_cmp);
            f64::from(base[i] + column[1])
        })
        .collect();
    assert_close("median v4", &params_of(&sandbox, 4), &want);

    // FedProx: the same rounds (no clipping in reach, no noise) with and without the proximal
    // term; with it the stores' steps stay nearer the model they started from.
    let mean_norm = |deltas: &[Vec<f32>]| {
        deltas
            .iter()
            .map(|d| d.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
            .sum::<f64>()
            / deltas.len() as f64
    };
    let free_spec = pb::RoundSpec {
        clip_norm: 1000.0,
        local_steps: 8,
        ..spec(3, 0.0)
    };
    wait_installed(&sandbox, 4).await;
    let free = run_round(&mut sandbox, free_spec.clone()).await;
    assert_eq!(free.published_version, 5);
    let free_norm = mean_norm(&deltas_of(&sandbox, &free.round_id));
    wait_installed(&sandbox, 5).await;
    let mu = 20.0f32;
    let held = run_round(
        &mut sandbox,
        pb::RoundSpec {
            proximal_mu: mu,
            ..free_spec
        },
    )
    .await;
    assert_eq!(held.published_version, 6);
    assert_eq!(held.spec.as_ref().map(|s| s.proximal_mu), Some(mu));
    let held_norm = mean_norm(&deltas_of(&sandbox, &held.round_id));
    assert!(
        held_norm < 0.7 * free_norm,
        "mean delta norm with mu = {mu}: {held_norm}, without: {free_norm}"
    );

    // A robust strategy with noise, or a parameter for another strategy, never starts.
    for (bad, expected) in [
        (
            pb::RoundSpec {
                strategy: "trimmed_mean".into(),
                ..spec(3, 0.5)
            },
            "no sensitivity bound",
        ),
        (
            pb::RoundSpec {
                trim_fraction: Some(0.2),
                ..spec(3, 0.0)
            },
            "trim_fraction applies to trimmed_mean",
        ),
        (
            pb::RoundSpec {
                strategy: "krum".into(),
                ..spec(3, 0.0)
            },
            "unknown strategy",
        ),
        (
            pb::RoundSpec {
                proximal_mu: -1.0,
                ..spec(3, 0.0)
            },
            "proximal_mu must be in [0, 1000]",
        ),
    ] {
        let status = sandbox
            .admin
            .start_round(pb::StartRoundRequest {
                lineage: sandbox.lineage.clone(),
                spec: Some(bad),
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("a round with {expected:?} started"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains(expected), "{status}");
    }
    shutdown(sandbox).await;
}
