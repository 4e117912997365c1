//! Two coordinator replicas (the `backroom` binary, two processes) on one PostgreSQL database
//! and one blob store. Three store-node processes talk to replica B only; an engineer starts a
//! round on replica A, which takes the round's lease and drives it. A is killed with SIGKILL
//! while the round trains. B takes the expired lease over, finishes the round from its last
//! durable state and publishes exactly one version, which every store installs; a second round
//! started on B runs as usual.
//!
//! Needs `DATABASE_URL`; skips without it unless `BACKROOM_REQUIRE_POSTGRES=1`.

use std::path::Path;
use std::time::Duration;

use backroom_proto::v1 as pb;

use crate::support::{Process, free_port, postgres_admin, postgres_url, run, write};

const STORES: usize = 3;

fn schema() -> String {
    format!("e2e_replicas_{}", std::process::id())
}

fn spec() -> pb::RoundSpec {
    pb::RoundSpec {
        strategy: "fedavg".into(),
        target_clients: STORES as u32,
        min_clients: STORES as u32,
        deadline_secs: 120,
        local_steps: 2,
        batch_size: 16,
        learning_rate: 0.05,
        clip_norm: 0.5,
        noise_multiplier: 0.0,
        noise_mode: "central".into(),
        adaptive_clipping: None,
        server_learning_rate: None,
        trim_fraction: None,
        proximal_mu: 0.0,
    }
}

/// An admin client of the replica at `url`, retried while it starts.
async fn admin(url: &str, bundle: &Path, log: &Path) -> backroom::client::AdminClient {
    for _ in 0..600 {
        if let Ok(client) = backroom::client::admin(url, "localhost", bundle).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the replica at {url} did not come up:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Follows a round through replica `admin` until it ends; returns its last state.
async fn until_final(admin: &mut backroom::client::AdminClient, round_id: &str) -> pb::Round {
    let mut watch = admin
        .watch_round(pb::GetRoundRequest {
            round_id: round_id.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("watch: {s}"))
        .into_inner();
    let mut last = None;
    while let Some(round) = watch
        .message()
        .await
        .unwrap_or_else(|s| panic!("watch: {s}"))
    {
        last = Some(round);
    }
    last.unwrap_or_else(|| panic!("no state of {round_id}"))
}

async fn wait_installed(admin: &mut backroom::client::AdminClient, version: u64) {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let nodes = admin
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .unwrap_or_else(|s| panic!("list nodes: {s}"))
                .into_inner()
                .nodes;
            if nodes.len() == STORES && nodes.iter().all(|n| n.installed_version == version) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not every store installed v{version}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_the_round_of_a_killed_one_and_publishes_it_once() {
    let Some(url) = postgres_url() else {
        eprintln!("skipped: coordinator replicas on PostgreSQL (set DATABASE_URL=postgres://…)");
        return;
    };
    postgres_admin(&url, &format!("DROP SCHEMA IF EXISTS {} CASCADE", schema())).await;
    postgres_admin(&url, &format!("CREATE SCHEMA {}", schema())).await;
    let separator = if url.contains('?') { '&' } else { '?' };
    let database_url = format!("{url}{separator}options=-c%20search_path%3D{}", schema());

    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    let data_dir = dir.join("coordinator");
    let data_dir_text = data_dir.display().to_string();
    // The replicas share the CA and signing keys (a deployment mounts them from one secret)
    // and the blob store (here one directory; a bucket in a deployment).
    run(&[
        "enroll",
        "--data-dir",
        &data_dir_text,
        "--admin",
        "alice",
        "--out",
        &dir.join("bundles/alice").display().to_string(),
    ]);
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let port = free_port();
        let config = dir.join(format!("replica-{name}.toml"));
        write(
            &config,
            &format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"coordinator\"\n\
                 database_url = \"{database_url}\"\nblob_store = \"coordinator/blobs\"\n\
                 lineage = \"shelfnet\"\nheartbeat_interval_secs = 1\nsampling_timeout_secs = 60\n\
                 online_window_secs = 30\nround_lease_secs = 2\n\
                 [privacy]\nunlimited = true\ndelta = 1e-5\n"
            ),
        );
        let log = dir.join(format!("replica-{name}.log"));
        replicas.push((format!("https://127.0.0.1:{port}"), config, log));
    }
    // A first, so it creates the database schema and v1 alone; then B.
    let mut replica_a = Process::spawn(&["coordinator"], &replicas[0].1, &replicas[0].2);
    let bundle = dir.join("bundles/alice");
    let mut admin_a = admin(&replicas[0].0, &bundle, &replicas[0].2).await;
    let _replica_b = Process::spawn(&["coordinator"], &replicas[1].1, &replicas[1].2);
    let mut admin_b = admin(&replicas[1].0, &bundle, &replicas[1].2).await;

    // The stores know replica B only.
    let mut nodes = Vec::new();
    for i in 0..STORES {
        let store = format!("store-{}", i + 1);
        run(&[
            "enroll",
            "--data-dir",
            &data_dir_text,
            "--store",
            &store,
            "--out",
            &dir.join("bundles").join(&store).display().to_string(),
        ]);
        let config = dir.join(format!("{store}.toml"));
        write(
            &config,
            &format!(
                "coordinator_url = \"{}\"\ntls_server_name = \"localhost\"\n\
                 bundle_dir = \"bundles/{store}\"\ndata_dir = \"{store}\"\nlineage = \"shelfnet\"\n\
                 backend = \"cpu\"\npoll_wait_secs = 5\n[data]\nworld_seed = 2024\nstore_index = {i}\n\
                 train_samples = 64\n[camera]\nframe_interval_ms = 2000\n",
                replicas[1].0
            ),
        );
        nodes.push(Process::spawn(
            &["node"],
            &config,
            &dir.join(format!("{store}.log")),
        ));
    }
    wait_installed(&mut admin_b, 1).await;

    // Started on A, which takes the lease.
    let round_id = admin_a
        .start_round(pb::StartRoundRequest {
            lineage: "shelfnet".into(),
            spec: Some(spec()),
        })
        .await
        .unwrap_or_else(|s| panic!("start on A: {s}"))
        .into_inner()
        .round_id;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let round = admin_b
                .get_round(pb::GetRoundRequest {
                    round_id: round_id.clone(),
                })
                .await
                .unwrap_or_else(|s| panic!("get on B: {s}"))
                .into_inner();
            if round.state == pb::RoundState::Training as i32 {
                return;
            }
            assert_eq!(
                round.failure_reason, "",
                "round ended before training: {round:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the round never trained"));
    let log_a = std::fs::read_to_string(&replicas[0].2).unwrap_or_default();
    assert!(
        log_a
            .lines()
            .any(|l| l.contains("driving the round") && l.contains(&round_id)),
        "replica A did not drive the round it started:\n{log_a}"
    );

    // The owner dies mid-round (no shutdown: its lease is left to expire).
    replica_a.kill();
    let round = tokio::time::timeout(
        Duration::from_secs(120),
        until_final(&mut admin_b, &round_id),
    )
    .await
    .unwrap_or_else(|_| panic!("the round did not end after its owner was killed"));
    let tail = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert_eq!(
        round.state,
        pb::RoundState::Published as i32,
        "{}\n--- replica A:\n{}\n--- replica B:\n{}",
        round.failure_reason,
        tail(&replicas[0].2),
        tail(&replicas[1].2)
    );
    assert_eq!(round.published_version, 2);
    assert_eq!(round.updates_accepted, STORES as u32);
    let log_b = std::fs::read_to_string(&replicas[1].2).unwrap_or_default();
    assert!(
        log_b
            .lines()
            .any(|l| l.contains("driving the round") && l.contains(&round_id)),
        "replica B did not take the round over:\n{log_b}"
    );
    wait_installed(&mut admin_b, 2).await;

    // Published once; no lease left behind.
    let pool = sqlx::postgres::PgPool::connect(&database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let versions: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, round_id FROM model_versions ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(versions, [(1, String::new()), (2, round_id.clone())]);
    let leases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM round_leases")
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leases, 0);
    pool.close().await;

    // The survivor carries on alone.
    let next = admin_b
        .start_round(pb::StartRoundRequest {
            lineage: "shelfnet".into(),
            spec: Some(spec()),
        })
        .await
        .unwrap_or_else(|s| panic!("start on B: {s}"))
        .into_inner()
        .round_id;
    let next = tokio::time::timeout(Duration::from_secs(120), until_final(&mut admin_b, &next))
        .await
        .unwrap_or_else(|_| panic!("the second round did not end"));
    assert_eq!(next.published_version, 3, "{}", next.failure_reason);
    wait_installed(&mut admin_b, 3).await;

    drop(nodes);
    postgres_admin(&url, &format!("DROP SCHEMA {} CASCADE", schema())).await;
}
