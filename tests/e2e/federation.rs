//! Coordinator + 3 nodes, several rounds: versions are signed, published and installed; the
//! aggregate is exactly the mean of the clipped deltas without noise, and carries noise of the
//! configured scale with it; every node's metric windows arrive once each, as noised releases.

use std::collections::BTreeSet;
use std::time::Duration;

use backroom_models::manifest::Manifest;
use backroom_proto::v1 as pb;

use crate::support::{
    coordinator_db, l2, list_models, params_of, round_updates, run_round, sandbox, shutdown, spec,
    wait_installed,
};

fn mean_of(updates: &[(std::path::PathBuf, Vec<f32>)]) -> Vec<f64> {
    let n = updates[0].1.len();
    let mut mean = vec![0.0f64; n];
    for (_, delta) in updates {
        assert_eq!(delta.len(), n);
        for (m, d) in mean.iter_mut().zip(delta) {
            *m += f64::from(*d);
        }
    }
    for m in &mut mean {
        *m /= updates.len() as f64;
    }
    mean
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_publish_signed_versions_installed_by_every_node_with_exact_aggregation() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = sandbox(dir.path(), 3).await;
    wait_installed(&sandbox, 1).await;

    // Round 1, noise off: the new model is base + mean of the clipped deltas, exactly.
    let round = run_round(&mut sandbox, spec(3, 0.0)).await;
    assert_eq!(round.published_version, 2);
    assert_eq!(round.updates_accepted, 3);
    let updates = round_updates(&sandbox, &round.round_id);
    assert_eq!(updates.len(), 3, "one stored update per node");
    for (path, delta) in &updates {
        let norm = l2(delta);
        assert!(norm <= 0.5, "{} has norm {norm} above C", path.display());
        assert!(norm > 0.0, "{} is an empty delta", path.display());
    }
    let mean = mean_of(&updates);
    let (v1, v2) = (params_of(&sandbox, 1), params_of(&sandbox, 2));
    let worst = v1
        .iter()
        .zip(&v2)
        .zip(&mean)
        .map(|((a, b), m)| (f64::from(*b) - f64::from(*a) - m).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst <= 1e-6,
        "aggregate differs from the mean of clipped deltas by {worst}"
    );
    wait_installed(&sandbox, 2).await;

    // Round 2, noise on: the residual after removing the mean is N(0, (zC/n)^2) per coordinate.
    // With ~70k coordinates the sample standard deviation has a relative standard error of
    // about 0.3%, so the 5% band below fails by chance with probability far below 1e-12.
    let z = 1.0f32;
    let round = run_round(&mut sandbox, spec(3, z)).await;
    assert_eq!(round.published_version, 3);
    let updates = round_updates(&sandbox, &round.round_id);
    assert_eq!(updates.len(), 3);
    let mean = mean_of(&updates);
    let v3 = params_of(&sandbox, 3);
    let residual: Vec<f64> = v2
        .iter()
        .zip(&v3)
        .zip(&mean)
        .map(|((a, b), m)| f64::from(*b) - f64::from(*a) - m)
        .collect();
    let n = residual.len() as f64;
    let avg = residual.iter().sum::<f64>() / n;
    let std = (residual.iter().map(|r| (r - avg).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let expected = f64::from(z) * 0.5 / 3.0;
    assert!(
        (std / expected - 1.0).abs() < 0.05,
        "noise std {std}, expected {expected}"
    );
    assert!(
        avg.abs() < 6.0 * expected / n.sqrt(),
        "noise mean {avg} is biased"
    );

    // Every node installs the newest signed version; its manifest records the DP parameters.
    wait_installed(&sandbox, 3).await;
    for node in &sandbox.nodes {
        assert_eq!(
            node.status.borrow().installed_version,
            3,
            "{}",
            node.store_id
        );
    }
    let models = list_models(&mut sandbox).await;
    assert_eq!(
        models.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let manifest = Manifest::from_bytes(&models[2].manifest).unwrap_or_else(|e| panic!("{e}"));
    let dp = manifest
        .dp
        .unwrap_or_else(|| panic!("v3 manifest has no DP parameters"));
    assert_eq!((dp.clip_norm, dp.noise_multiplier), (0.5, z));
    // The exact number of contributors is private under Poisson sampling: not published.
    assert_eq!(dp.clients, None);
    assert_eq!(
        (
            dp.sampling_rate,
            dp.expected_clients,
            dp.noise_mode.as_deref()
        ),
        (Some(1.0), Some(3.0), Some("central"))
    );
    assert_eq!(manifest.parent_version, 2);

    // Metric windows from the nodes arrive, each exactly once.
    for node in &sandbox.nodes {
        let mut status = node.status.clone();
        tokio::time::timeout(
            Duration::from_secs(60),
            status.wait_for(|s| s.windows_synced >= 1),
        )
        .await
        .unwrap_or_else(|_| panic!("{} synced no metric window", node.store_id))
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let rows = sandbox
        .admin
        .query_metrics(pb::QueryMetricsRequest::default())
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner()
        .rows;
    let keys: BTreeSet<_> = rows
        .iter()
        .map(|r| (r.store_id.clone(), r.window_start_unix))
        .collect();
    assert_eq!(keys.len(), rows.len(), "a window was counted twice");
    assert!(keys.iter().map(|k| &k.0).collect::<BTreeSet<_>>().len() == 3);
    for row in &rows {
        crate::metrics::assert_noised_release(row);
    }

    shutdown(sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_resumes_after_a_coordinator_restart_without_losing_accepted_updates() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = sandbox(dir.path(), 3).await;
    wait_installed(&sandbox, 1).await;
    // Store 3 stops but still counts as online, so it is sampled and never answers: the round
    // stays in `training` until its deadline, whatever the timing of the other two.
    sandbox
        .stop_node(2)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let round = sandbox
        .admin
        .start_round(pb::StartRoundRequest {
            lineage: sandbox.lineage.clone(),
            spec: Some(pb::RoundSpec {
                min_clients: 2,
                deadline_secs: 15,
                ..spec(3, 0.0)
            }),
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner();
    // Wait for the first accepted update, then restart the coordinator mid-round.
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let now = sandbox
                .admin
                .get_round(pb::GetRoundRequest {
                    round_id: round.round_id.clone(),
                })
                .await
                .unwrap_or_else(|s| panic!("{s}"))
                .into_inner();
            if now.updates_accepted >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no update accepted"));
    sandbox
        .stop_coordinator()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pool = coordinator_db(&sandbox).await;
    let state: String = sqlx::query_scalar("SELECT state FROM rounds WHERE round_id = ?")
        .bind(&round.round_id)
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    pool.close().await;
    assert_eq!(
        state, "training",
        "the restart must interrupt a running round"
    );
    let kept = crate::support::round_updates(&sandbox, &round.round_id);
    assert!(!kept.is_empty());
    sandbox
        .restart_coordinator()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    let mut watch = sandbox
        .admin
        .watch_round(pb::GetRoundRequest {
            round_id: round.round_id.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner();
    let mut last = None;
    while let Some(update) = watch.message().await.unwrap_or_else(|s| panic!("{s}")) {
        last = Some(update);
    }
    let last = last.unwrap_or_else(|| panic!("no round state after the restart"));
    assert_eq!(
        last.state,
        pb::RoundState::Published as i32,
        "{}",
        last.failure_reason
    );
    assert_eq!(last.updates_accepted, 2);
    let after = crate::support::round_updates(&sandbox, &round.round_id);
    for (path, _) in &kept {
        assert!(
            after.iter().any(|(p, _)| p == path),
            "{} was lost",
            path.display()
        );
    }
    let models = list_models(&mut sandbox).await;
    assert_eq!(
        models.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![1, 2],
        "published once"
    );
    shutdown(sandbox).await;
}
