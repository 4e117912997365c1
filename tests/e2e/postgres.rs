//! The coordinator on PostgreSQL instead of embedded SQLite, selected by its database URL alone:
//! three real nodes, rounds published and installed, a coordinator restart that resumes from
//! the database, the privacy ledger in PostgreSQL, and no SQLite file written.
//!
//! Needs `DATABASE_URL` (a PostgreSQL server); skips without it unless
//! `BACKROOM_REQUIRE_POSTGRES=1` (CI), when it fails instead.

use backroom_coordinator::CoordinatorConfig;

use crate::support::{
    params_of, postgres_admin, postgres_url, run_round, shutdown, spec, start, test_options,
    wait_installed,
};

/// This process's schema (a test run of its own never meets another run's tables).
fn schema() -> String {
    format!("e2e_pilot_{}", std::process::id())
}

/// Points the coordinator at this process's schema on the `DATABASE_URL` server.
fn use_postgres(config: &mut CoordinatorConfig) {
    let url = postgres_url().unwrap_or_else(|| panic!("DATABASE_URL vanished"));
    let separator = if url.contains('?') { '&' } else { '?' };
    config.database_url = format!("{url}{separator}options=-c%20search_path%3D{}", schema());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pilot_runs_its_rounds_on_postgresql_and_resumes_from_it() {
    let Some(url) = postgres_url() else {
        eprintln!("skipped: coordinator on PostgreSQL (set DATABASE_URL=postgres://…)");
        return;
    };
    postgres_admin(&url, &format!("DROP SCHEMA IF EXISTS {} CASCADE", schema())).await;
    postgres_admin(&url, &format!("CREATE SCHEMA {}", schema())).await;

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 3);
    options.coordinator = use_postgres;
    let mut sandbox = start(options).await;
    wait_installed(&sandbox, 1).await;

    let first = run_round(&mut sandbox, spec(3, 0.0)).await;
    assert_eq!(first.published_version, 2);
    assert_eq!(first.updates_accepted, 3);
    wait_installed(&sandbox, 2).await;

    // Everything the coordinator knows lives in PostgreSQL: after a restart it carries on.
    sandbox
        .stop_coordinator()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    sandbox
        .restart_coordinator()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let second = run_round(&mut sandbox, spec(3, 0.0)).await;
    assert_eq!(second.published_version, 3);
    wait_installed(&sandbox, 3).await;
    assert_ne!(params_of(&sandbox, 2), params_of(&sandbox, 3));

    // The rows are in PostgreSQL, in this run's schema; no SQLite database was created.
    let pool = sqlx::postgres::PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let versions: i64 =
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}.model_versions", schema()))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(versions, 3);
    let updates: i64 =
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}.round_updates", schema()))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(updates, 6);
    let charged: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {}.privacy_ledger WHERE status = 'spent'",
        schema()
    ))
    .fetch_one(&pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(charged, 2);
    pool.close().await;
    assert!(
        !sandbox.coordinator_dir.join("coordinator.db").exists(),
        "a SQLite database was created although the URL named PostgreSQL"
    );

    shutdown(sandbox).await;
    postgres_admin(&url, &format!("DROP SCHEMA {} CASCADE", schema())).await;
}
