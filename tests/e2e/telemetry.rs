//! Prometheus telemetry: the coordinator's `/metrics` (behind a staff certificate) counts what a
//! round did, and a node's `/metrics` counts its own work; neither names a store.

use std::time::Duration;

use axum::http::StatusCode;
use backroom::sandbox::issue_bundle;
use backroom_coordinator::identity::Role;

use crate::support::{http_get, run_round, shutdown, spec, start, test_options};

/// The value of the first sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_and_nodes_serve_prometheus_counts_of_a_round() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 2);
    options.node_telemetry = true;
    let mut sandbox = start(options).await;
    run_round(&mut sandbox, spec(2, 0.0)).await;

    let bundles = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ops = issue_bundle(
        &sandbox.coordinator_dir,
        Role::Operations,
        "prometheus",
        &bundles.path().join("ops"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let channel = backroom::client::connect(&sandbox.coordinator_url, "localhost", &ops)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (status, text) = http_get(&channel, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        sample(&text, "backroom_rounds_started_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "backroom_updates_total{outcome=\"accepted\",reason=\"\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "backroom_model_version{lineage=\"shelfnet\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "backroom_rounds{lineage=\"shelfnet\",state=\"published\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "backroom_aggregation_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "backroom_received_bytes_total{rpc=\"upload_update\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    assert!(
        sample(&text, "backroom_sent_bytes_total{rpc=\"download_model\"}").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "backroom_nodes_enrolled"),
        Some(2.0),
        "{text}"
    );
    for node in &sandbox.nodes {
        assert!(
            !text.contains(&node.store_id),
            "a store id in telemetry: {text}"
        );
    }

    // Each node: its own counts, on its own port, in plain HTTP.
    for node in &sandbox.nodes {
        let addr = node
            .config
            .telemetry_listen
            .unwrap_or_else(|| panic!("no telemetry_listen"));
        let mut status = node.status.clone();
        tokio::time::timeout(
            Duration::from_secs(60),
            status.wait_for(|s| s.frames_processed > 0 && s.installed_version == 2),
        )
        .await
        .unwrap_or_else(|_| panic!("no frame processed"))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            sample(&response, "backroom_node_frames_processed_total").unwrap_or(0.0) > 0.0,
            "{response}"
        );
        assert_eq!(
            sample(&response, "backroom_node_rounds_trained_total"),
            Some(1.0),
            "{response}"
        );
        let installed = response
            .lines()
            .find(|l| l.starts_with("backroom_node_installed_model_version{backend="))
            .unwrap_or_default();
        assert!(installed.ends_with(" 2"), "{response}");
        assert!(!response.contains(&node.store_id), "{response}");
    }
    shutdown(sandbox).await;
}
