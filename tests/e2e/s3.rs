//! The coordinator's blob store in an S3-compatible bucket instead of a local directory,
//! selected by `blob_store = "s3://…"` alone: three real nodes, rounds whose weights, updates
//! and base models all go through the bucket, a restart that carries on from it, and no local
//! blob written.
//!
//! Needs `BACKROOM_TEST_S3_ENDPOINT` (an S3-compatible server with a bucket `backroom-test`;
//! `.ci/run` starts moto's); skips without it unless `BACKROOM_REQUIRE_S3=1` (CI), when it fails
//! instead.

use backroom_coordinator::CoordinatorConfig;

use crate::support::{run_round, shutdown, spec, start, test_options, wait_installed};

/// Points the coordinator's blob store at a prefix of its own in the test bucket.
fn use_bucket(config: &mut CoordinatorConfig) {
    let endpoint = crate::support::s3_endpoint()
        .unwrap_or_else(|| panic!("BACKROOM_TEST_S3_ENDPOINT vanished"));
    config.blob_store = Some(format!("s3://backroom-test/e2e-{}", std::process::id()));
    config.blob_store_options = [
        ("endpoint", endpoint.as_str()),
        ("allow_http", "true"),
        ("region", "us-east-1"),
        ("access_key_id", "backroom-test"),
        ("secret_access_key", "backroom-test"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pilot_keeps_weights_and_updates_in_an_s3_bucket() {
    if crate::support::s3_endpoint().is_none() {
        eprintln!("skipped: blob store in S3 (set BACKROOM_TEST_S3_ENDPOINT=http://…)");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 3);
    options.coordinator = use_bucket;
    let mut sandbox = start(options).await;
    // v1's weights were written to the bucket and served from it, checked by every node.
    wait_installed(&sandbox, 1).await;

    let first = run_round(&mut sandbox, spec(3, 0.0)).await;
    assert_eq!(first.published_version, 2, "{}", first.failure_reason);
    assert_eq!(first.updates_accepted, 3);
    wait_installed(&sandbox, 2).await;

    // The round's base and updates are read back from the bucket after a restart too.
    sandbox
        .stop_coordinator()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    sandbox
        .restart_coordinator()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let second = run_round(&mut sandbox, spec(3, 0.0)).await;
    assert_eq!(second.published_version, 3, "{}", second.failure_reason);
    wait_installed(&sandbox, 3).await;

    // Every version and update row names a blob by content; none was written locally.
    let pool = crate::support::coordinator_db(&sandbox).await;
    let references: Vec<String> = sqlx::query_scalar(
        "SELECT weights_path FROM model_versions UNION ALL SELECT blob_path FROM round_updates",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    pool.close().await;
    assert_eq!(references.len(), 3 + 6);
    for reference in &references {
        assert!(
            backroom_coordinator::blobs::is_reference(reference),
            "{reference} is not a blob reference"
        );
    }
    assert!(
        !sandbox.coordinator_dir.join("blobs").exists(),
        "blobs were written locally although blob_store names a bucket"
    );

    shutdown(sandbox).await;
}
