//! Shelf metrics end to end: windows leave the nodes only as noised releases, arrive exactly
//! once (also across a coordinator outage), and a store's day budget refuses windows once spent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use backroom::sandbox::Sandbox;
use backroom_proto::v1 as pb;
use backroom_proto::v1::node_service_client::NodeServiceClient;
use backroom_store_node::MetricPrivacySettings;

use crate::support::{coordinator_db, sandbox, shutdown, start, test_options};

/// Columns of the raw window counts that must never be stored outside a node's memory.
const RAW_COLUMNS: [&str; 4] = [
    "frames",
    "slot_observations",
    "empty_slot_observations",
    "out_of_stock_events",
];

/// A row is a noised release: a privacy cost, the three metrics, each with noise, and a value
/// exactly when not suppressed.
pub fn assert_noised_release(row: &pb::MetricRow) {
    assert!(row.rho > 0.0, "{row:?}");
    let names: BTreeSet<&str> = row.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["frames", "out_of_stock_events", "out_of_stock_minutes"]),
        "{row:?}"
    );
    for m in &row.metrics {
        assert!(m.noise_scale > 0.0 && m.sensitivity > 0.0, "{m:?}");
        assert_eq!(m.suppressed, m.value.is_none(), "{m:?}");
    }
}

/// Every column of every table of the SQLite database at `pool`.
async fn columns(pool: &sqlx::SqlitePool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT m.name || '.' || p.name FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn assert_no_raw_column(columns: &[String], whose: &str) {
    for column in columns {
        let name = column.rsplit('.').next().unwrap_or_default();
        assert!(
            !RAW_COLUMNS.contains(&name),
            "{whose} stores a raw count column {column}"
        );
    }
}

async fn node_db(data_dir: &Path) -> sqlx::SqlitePool {
    let db = data_dir.join("node.db");
    sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn query(sandbox: &mut Sandbox) -> pb::QueryMetricsResponse {
    sandbox
        .admin
        .query_metrics(pb::QueryMetricsRequest::default())
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_windows_queue_while_the_coordinator_is_away_and_arrive_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = sandbox(dir.path(), 1).await;
    let mut status = sandbox.nodes[0].status.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.windows_synced >= 1),
    )
    .await
    .unwrap_or_else(|_| panic!("no window synced"))
    .unwrap_or_else(|e| panic!("{e}"));

    sandbox
        .stop_coordinator()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The camera goes on: windows are released and wait in the node's queue.
    let synced_before = status.borrow().windows_synced;
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.metric_releases >= s.windows_synced + 3),
    )
    .await
    .unwrap_or_else(|_| panic!("no windows queued while the coordinator was away"))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.borrow().windows_synced <= synced_before + 1);

    sandbox
        .restart_coordinator()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let released = status.borrow().metric_releases;
    tokio::time::timeout(
        Duration::from_secs(90),
        status.wait_for(|s| s.windows_synced >= released),
    )
    .await
    .unwrap_or_else(|_| panic!("queued releases were not synced after the coordinator came back"))
    .unwrap_or_else(|e| panic!("{e}"));
    // The default budget holds a whole day of hourly releases: none is refused.
    assert_eq!(status.borrow().releases_refused, 0);

    let rows = query(&mut sandbox).await.rows;
    // Every hourly window from the first to the last is there, exactly once, noised.
    let starts: Vec<i64> = rows.iter().map(|r| r.window_start_unix).collect();
    assert!(
        starts.len() as u64 >= released,
        "{} rows for {released} released windows",
        starts.len()
    );
    for pair in starts.windows(2) {
        assert_eq!(pair[1] - pair[0], 3600, "gap or duplicate in {starts:?}");
    }
    rows.iter().for_each(assert_noised_release);

    // Neither side keeps a raw count anywhere.
    let node_dir = sandbox.nodes[0].config.data_dir.clone();
    let pool = node_db(&node_dir).await;
    assert_no_raw_column(&columns(&pool).await, "the node");
    pool.close().await;
    let pool = coordinator_db(&sandbox).await;
    assert_no_raw_column(&columns(&pool).await, "the coordinator");
    pool.close().await;
    shutdown(sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_day_budget_refuses_windows_and_the_coordinator_takes_only_noised_releases() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 1);
    // Three hourly releases (0.9) fit in a day's 1.0; the other 21 windows of each day are refused.
    options.metrics = MetricPrivacySettings {
        rho_per_release: 0.3,
        rho_per_day: 1.0,
        suppress_below: 5,
    };
    let mut sandbox = start(options).await;
    let mut status = sandbox.nodes[0].status.clone();
    tokio::time::timeout(
        Duration::from_secs(90),
        status.wait_for(|s| s.releases_refused >= 2 && s.windows_synced >= 3),
    )
    .await
    .unwrap_or_else(|_| panic!("no refusal: {:?}", sandbox.nodes[0].status.borrow()))
    .unwrap_or_else(|e| panic!("{e}"));
    let day = status
        .borrow()
        .metric_budget
        .clone()
        .unwrap_or_else(|| panic!("the node shows no budget"));
    assert!(day.rho_spent <= day.rho_budget + 1e-12, "{day:?}");
    assert_eq!(day.rho_budget, 1.0);

    // No UTC day carries more releases than its budget pays for.
    let rows = query(&mut sandbox).await.rows;
    let mut per_day: BTreeMap<i64, f64> = BTreeMap::new();
    for row in &rows {
        assert_noised_release(row);
        *per_day
            .entry(row.window_start_unix.div_euclid(86_400))
            .or_default() += row.rho;
    }
    assert!(!per_day.is_empty());
    for (day, spent) in &per_day {
        assert!(*spent <= 1.0 + 1e-9, "day {day} released rho {spent}");
    }

    // `backroom node-budget` reads the same ledger, read-only, while the node runs.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_backroom"))
        .args(["node-budget", "--json", "--data-dir"])
        .arg(&sandbox.nodes[0].config.data_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ledger: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}"));
    let days = ledger.as_array().cloned().unwrap_or_default();
    let spent_day = days
        .iter()
        .find(|d| d["refused"].as_u64().unwrap_or(0) >= 1)
        .unwrap_or_else(|| panic!("no day with a refusal in {ledger}"));
    assert_eq!(spent_day["releases"], 3, "{ledger}");
    assert!((spent_day["rho_spent"].as_f64().unwrap_or(0.0) - 0.9).abs() < 1e-9);
    assert!(
        spent_day["date"]
            .as_str()
            .is_some_and(|d| d.starts_with("2024-01-"))
    );

    // A node may resend a release (counted once); anything that is not a noised release is
    // refused.
    let channel = backroom::client::connect(
        &sandbox.coordinator_url,
        "localhost",
        &dir.path().join("bundles/store-1"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut node = NodeServiceClient::new(channel);
    let mut batch = pb::MetricBatch {
        idempotency_key: "store-1:9:1000".into(),
        window_start_unix: 1_000,
        window_secs: 3600,
        camera_id: 9,
        slots_per_frame: 12,
        seconds_per_frame: 300,
        rho: rows[0].rho,
        metrics: rows[0].metrics.clone(),
    };
    let send = |batch: pb::MetricBatch| {
        let mut node = node.clone();
        async move {
            node.sync_metrics(pb::SyncMetricsRequest {
                batches: vec![batch.clone(), batch],
            })
            .await
        }
    };
    let sent = send(batch.clone())
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner();
    assert_eq!((sent.accepted, sent.duplicates), (1, 1));
    batch.idempotency_key = "store-1:9:4600".into();
    batch.rho = 0.0;
    let refused = send(batch.clone()).await.expect_err("a batch without rho");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    batch.rho = rows[0].rho;
    batch.metrics[0].noise_scale = 0.0;
    let refused = send(batch.clone())
        .await
        .expect_err("a batch without noise");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    batch.metrics.clear();
    let refused = node
        .sync_metrics(pb::SyncMetricsRequest {
            batches: vec![batch],
        })
        .await
        .expect_err("a batch with no noised metric");
    assert!(refused.message().contains("noised"), "{refused:?}");
    let resent: Vec<_> = query(&mut sandbox)
        .await
        .rows
        .into_iter()
        .filter(|r| r.camera_id == 9)
        .collect();
    assert_eq!(resent.len(), 1, "{resent:?}");
    shutdown(sandbox).await;
}
