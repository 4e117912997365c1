//! Privacy budgets over real mTLS: a round that would overspend does not start, concurrent
//! starts never jointly overspend, ε is written into manifests and the CLI plans budgets.

use std::process::Command;

use backroom_coordinator::ledger::Budget;
use backroom_coordinator::privacy::{DpEvent, compute_epsilon};
use backroom_proto::v1 as pb;

use crate::support::{list_models, run_round, shutdown, spec, start, test_options, wait_installed};

fn epsilon(sampling_rate: f64, noise_multiplier: f64, rounds: u64, delta: f64) -> f64 {
    let event = DpEvent {
        sampling_rate,
        noise_multiplier,
        rounds,
    };
    compute_epsilon(&[event], delta)
        .unwrap_or_else(|e| panic!("{e}"))
        .epsilon
}

async fn privacy(sandbox: &mut backroom::sandbox::Sandbox) -> pb::PrivacyReport {
    let lineage = sandbox.lineage.clone();
    sandbox
        .admin
        .get_privacy(pb::GetPrivacyRequest { lineage })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_that_would_exceed_the_budget_does_not_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 3);
    // Exactly one round at q = 1, z = 1 fits; a second does not.
    let (one, two) = (epsilon(1.0, 1.0, 1, 1e-5), epsilon(1.0, 1.0, 2, 1e-5));
    options.privacy_budget = Budget {
        epsilon_max: Some((one + two) / 2.0),
        delta: 1e-5,
    };
    let mut sandbox = start(options).await;
    wait_installed(&sandbox, 1).await;

    let first = run_round(&mut sandbox, spec(3, 1.0)).await;
    assert!((first.sampling_rate - 1.0).abs() < 1e-12);
    let after = first.epsilon_after.unwrap_or(f64::NAN);
    assert!((after - one).abs() < 1e-9 * one, "{after} vs {one}");
    // ε spent is in the signed manifest of the version the round published.
    let models = list_models(&mut sandbox).await;
    let published = models
        .iter()
        .find(|m| m.version == first.published_version)
        .unwrap_or_else(|| panic!("v{} not listed", first.published_version));
    let manifest: serde_json::Value =
        serde_json::from_slice(&published.manifest).unwrap_or_else(|e| panic!("{e}"));
    let in_manifest = manifest["epsilon_spent"].as_f64().unwrap_or(f64::NAN);
    assert!((in_manifest - one).abs() < 1e-9 * one, "{manifest}");
    assert_eq!(manifest["delta"].as_f64(), Some(1e-5));

    let refused = sandbox
        .admin
        .start_round(pb::StartRoundRequest {
            lineage: sandbox.lineage.clone(),
            spec: Some(spec(3, 1.0)),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a round beyond the budget started"));
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let message = refused.message();
    assert!(message.contains("privacy budget of lineage"), "{message}");
    assert!(message.contains("0 more round(s) fit"), "{message}");

    let report = privacy(&mut sandbox).await;
    assert_eq!(report.rounds_charged, 1);
    assert_eq!(report.rounds_remaining, Some(0));
    let spent = report.epsilon_spent.unwrap_or(f64::NAN);
    assert!((spent - one).abs() < 1e-9 * one);
    assert!(spent <= report.epsilon_max.unwrap_or(0.0));
    // No round of the refused kind was recorded.
    assert_eq!(report.ledger.len(), 1);
    shutdown(sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_round_starts_never_jointly_overspend() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // No store is online, so admitted rounds wait in `sampling` and can be cancelled before
    // any update arrives (and are then refunded).
    let mut options = test_options(dir.path(), 0);
    let (one, two) = (epsilon(1.0, 1.0, 1, 1e-5), epsilon(1.0, 1.0, 2, 1e-5));
    options.privacy_budget = Budget {
        epsilon_max: Some((one + two) / 2.0),
        delta: 1e-5,
    };
    let mut sandbox = start(options).await;
    for attempt in 0..2 {
        let starts = (0..8).map(|_| {
            let mut admin = sandbox.admin.clone();
            let lineage = sandbox.lineage.clone();
            tokio::spawn(async move {
                admin
                    .start_round(pb::StartRoundRequest {
                        lineage,
                        spec: Some(spec(3, 1.0)),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            })
        });
        let results = futures::future::join_all(starts).await;
        let mut admitted = Vec::new();
        for result in results {
            match result.unwrap_or_else(|e| panic!("{e}")) {
                Ok(round) => admitted.push(round),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
                    assert!(
                        status.message().contains("privacy budget"),
                        "refused for another reason: {}",
                        status.message()
                    );
                }
            }
        }
        assert_eq!(admitted.len(), 1, "attempt {attempt}: {admitted:?}");
        let report = privacy(&mut sandbox).await;
        assert_eq!(report.rounds_charged, 1, "attempt {attempt}");
        assert!(report.epsilon_spent.unwrap_or(f64::INFINITY) <= (one + two) / 2.0);
        // Cancelled before any update: refunded, so the next attempt may admit one again.
        sandbox
            .admin
            .cancel_round(pb::GetRoundRequest {
                round_id: admitted[0].round_id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("{s}"));
        let report = privacy(&mut sandbox).await;
        assert_eq!(report.rounds_charged, 0, "attempt {attempt}: {report:?}");
        assert!(report.ledger.iter().all(|e| e.status == "refunded"));
    }
    shutdown(sandbox).await;
}

#[test]
fn privacy_epsilon_plans_a_budget_from_the_command_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_backroom"))
        .args([
            "privacy",
            "epsilon",
            "--sampling-rate",
            "0.01",
            "--noise-multiplier",
            "1.0",
            "--rounds",
            "100",
            "--delta",
            "1e-5",
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let printed = json["epsilon"].as_f64().unwrap_or(f64::NAN);
    let expected = epsilon(0.01, 1.0, 100, 1e-5);
    assert!((printed - expected).abs() <= 1e-9 * expected, "{json}");
    assert!(printed > 0.0 && printed < 10.0, "{json}");

    let bad = Command::new(env!("CARGO_BIN_EXE_backroom"))
        .args([
            "privacy",
            "epsilon",
            "--sampling-rate",
            "1.5",
            "--noise-multiplier",
            "1.0",
            "--rounds",
            "10",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("sampling"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_clipping_moves_the_clip_norm_towards_the_target_quantile() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = start(test_options(dir.path(), 3)).await;
    wait_installed(&sandbox, 1).await;
    let (gamma, eta, count_stddev) = (0.5_f32, 0.2_f32, 0.01_f32);
    let adaptive_spec = pb::RoundSpec {
        clip_norm: 0.5,
        adaptive_clipping: Some(pb::AdaptiveClipping {
            target_quantile: gamma,
            learning_rate: eta,
            count_stddev,
        }),
        ..spec(3, 0.0)
    };
    let first = run_round(&mut sandbox, adaptive_spec.clone()).await;
    let pool = crate::support::coordinator_db(&sandbox).await;
    let bits: Vec<bool> =
        sqlx::query_scalar("SELECT within_clip FROM round_updates WHERE round_id = ?")
            .bind(&first.round_id)
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bits.len(), 3);
    let fraction = bits.iter().filter(|&&b| b).count() as f64 / 3.0;
    let expected = 0.5 * (-f64::from(eta) * (fraction - f64::from(gamma))).exp();
    // The count noise N(0, 0.01²)/3 moves the exponent by at most η·6σ_b/3 with probability
    // 1 − 2e-9 (a 6σ bound).
    let tolerance = expected * ((f64::from(eta) * 6.0 * f64::from(count_stddev) / 3.0).exp() - 1.0);
    let moved = f64::from(first.next_clip_norm);
    assert!(
        (moved - expected).abs() <= tolerance + 1e-6,
        "clip norm moved to {moved}, expected {expected} ± {tolerance} (bits {bits:?})"
    );
    assert!(
        (moved - 0.5).abs() > 0.01,
        "the clip norm did not move: {moved}"
    );

    // The next adaptive round starts from the adapted clip norm, and its deltas respect it.
    let second = run_round(&mut sandbox, adaptive_spec).await;
    let used = second.spec.as_ref().map_or(0.0, |s| s.clip_norm);
    assert!((f64::from(used) - moved).abs() < 1e-6, "{used} vs {moved}");
    for (path, delta) in crate::support::round_updates(&sandbox, &second.round_id) {
        let norm = crate::support::l2(&delta);
        assert!(
            norm <= f64::from(used),
            "{} has norm {norm}",
            path.display()
        );
    }
    shutdown(sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_noise_is_added_by_the_nodes_and_none_by_the_coordinator() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = start(test_options(dir.path(), 3)).await;
    wait_installed(&sandbox, 1).await;
    let (z, clip) = (0.5_f64, 0.5_f64);
    let round = run_round(
        &mut sandbox,
        pb::RoundSpec {
            noise_mode: "distributed".into(),
            ..spec(3, z as f32)
        },
    )
    .await;
    let updates = crate::support::round_updates(&sandbox, &round.round_id);
    assert_eq!(updates.len(), 3);
    // Each node's share: σ = zC/√(min_clients − 1) per coordinate (any two of the three shares
    // already make zC), so its upload's norm is about σ√d (the clipped part adds at most C).
    // The norm of d Gaussians has standard deviation σ/√2, so ±(C + 10σ) fails by chance with
    // probability below 1e-20.
    let sigma = z * clip / 2.0_f64.sqrt();
    for (path, delta) in &updates {
        let norm = crate::support::l2(delta);
        let expected = sigma * (delta.len() as f64).sqrt();
        assert!(
            (norm - expected).abs() <= clip + 10.0 * sigma,
            "{}: norm {norm}, expected ≈ {expected}",
            path.display()
        );
    }
    // The coordinator adds nothing: the new model is base + Σ uploads / 3, to f32 rounding.
    let base = crate::support::params_of(&sandbox, 1);
    let next = crate::support::params_of(&sandbox, round.published_version);
    let worst = (0..base.len())
        .map(|i| {
            let mean: f64 = updates.iter().map(|(_, d)| f64::from(d[i])).sum::<f64>() / 3.0;
            (f64::from(next[i]) - f64::from(base[i]) - mean).abs()
        })
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-5,
        "the coordinator changed the sum by up to {worst}"
    );
    shutdown(sandbox).await;
}
