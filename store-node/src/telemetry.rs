//! Prometheus telemetry of a store node: `GET /metrics` on `telemetry_listen` (plain HTTP).
//!
//! Everything served is a count of the node's own work read from its [`NodeStatus`] (frames
//! captured, processed, dropped; rounds trained; releases; the installed model version): no
//! frame, no store data, no noised or raw shelf metric. Faces, moving regions and wholly
//! masked frames are left out on purpose: per store and per minute they are a count of customers (foot traffic),
//! which leaves the store only as a noised release. It binds where the configuration says;
//! keep it on loopback or the store's management network, since the endpoint has no
//! authentication of its own (the node holds no CA to check client certificates against).

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::NodeStatus;

/// The exposition of one status snapshot.
pub fn render(status: &NodeStatus) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("backroom_node");
    let counters: [(&str, &str, u64); 10] = [
        (
            "frames_captured",
            "Frames the camera source handed to the pipeline",
            status.frames_captured,
        ),
        (
            "frames_processed",
            "Frames redacted, inferred and counted (rate() = redaction fps)",
            status.frames_processed,
        ),
        (
            "frames_dropped",
            "Frames dropped unprocessed because the pipeline was behind",
            status.frames_dropped,
        ),
        (
            "frames_unreadable",
            "Frames that could not be read or decoded",
            status.frames_unreadable,
        ),
        (
            "frames_stored",
            "Frame events written to the encrypted local store",
            status.frames_stored,
        ),
        (
            "store_errors",
            "Frames that could not be stored locally",
            status.store_errors,
        ),
        (
            "metric_releases",
            "Metric windows released (noised, charged, queued)",
            status.metric_releases,
        ),
        (
            "releases_refused",
            "Metric windows refused: the day's privacy budget was spent",
            status.releases_refused,
        ),
        (
            "windows_synced",
            "Metric releases acknowledged by the coordinator",
            status.windows_synced,
        ),
        (
            "rounds_trained",
            "Training rounds this node sent an update for",
            u64::from(status.rounds_trained),
        ),
    ];
    for (name, help, value) in counters {
        registry.register(name, help, ConstCounter::new(value));
    }
    registry.register(
        "models_refused",
        "Model versions refused at verification",
        ConstCounter::new(u64::from(status.refused_models)),
    );
    let version: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    version
        .get_or_create(&vec![("backend", status.backend.clone())])
        .set(i64::try_from(status.installed_version).unwrap_or(i64::MAX));
    registry.register(
        "installed_model_version",
        "Model version the node runs (0 before the first install), by compute backend",
        version,
    );
    // The pipeline's backlog: windows closed but not yet acknowledged by the coordinator.
    let backlog = status.metric_releases.saturating_sub(status.windows_synced);
    registry.register(
        "metric_sync_backlog",
        "Metric releases queued for the coordinator",
        ConstGauge::new(i64::try_from(backlog).unwrap_or(i64::MAX)),
    );
    if let Some(budget) = &status.metric_budget {
        registry.register(
            "metric_rho_remaining",
            "zCDP budget left for the current UTC day",
            ConstGauge::new(budget.rho_remaining),
        );
    }
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// Binds the telemetry listener (at start, so a taken port stops the node with a clear error).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for telemetry on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "telemetry on /metrics");
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<NodeStatus>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(status);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .context("telemetry server failed")
}

async fn metrics(State(status): State<watch::Receiver<NodeStatus>>) -> Response {
    let snapshot = status.borrow().clone();
    match render(&snapshot) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_renders_every_counter_and_the_version() {
        let status = NodeStatus {
            backend: "cpu".into(),
            installed_version: 3,
            frames_processed: 120,
            metric_releases: 5,
            windows_synced: 3,
            ..NodeStatus::default()
        };
        let text = render(&status).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            text.contains("backroom_node_frames_processed_total 120"),
            "{text}"
        );
        assert!(
            text.contains("backroom_node_installed_model_version{backend=\"cpu\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("backroom_node_metric_sync_backlog 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
