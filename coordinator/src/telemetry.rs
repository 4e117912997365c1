//! Prometheus telemetry of the coordinator, served at `GET /metrics` (operations, ML engineer and
//! admin certificates).
//!
//! Counters and histograms count what this process did since it started (updates accepted and
//! refused by reason, bytes in and out, aggregation time); gauges read from the database at
//! scrape time describe the federation as every replica sees it (rounds by state, newest model
//! version, nodes enrolled and recently seen). Nothing here names a store.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::Core;
use crate::error::Result;
use crate::registry::now_unix_ms;

type Labels = Vec<(&'static str, String)>;

/// A node counts as online when seen within this window.
const ONLINE_WINDOW_MS: i64 = 5 * 60 * 1000;

/// The coordinator's metric families.
pub struct Telemetry {
    registry: Mutex<Registry>,
    pub rounds_started: Counter,
    /// `outcome` = accepted | refused; `reason` = the refusal's class (empty when accepted).
    pub updates: Family<Labels, Counter>,
    /// `rpc` = upload_update | sync_metrics | upload_frame_export.
    pub bytes_received: Family<Labels, Counter>,
    /// `rpc` = download_model | download_frames.
    pub bytes_sent: Family<Labels, Counter>,
    pub aggregation_seconds: Histogram,
    /// `outcome` = accepted | duplicate.
    pub metric_releases: Family<Labels, Counter>,
    /// Long polls waiting for a task (the nodes' queue at the coordinator).
    pub polls_waiting: Gauge,
    /// Scrape-time gauges from the database.
    rounds: Family<Labels, Gauge>,
    model_version: Family<Labels, Gauge>,
    nodes_enrolled: Gauge,
    nodes_online: Gauge,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry(..)")
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        let telemetry = Telemetry {
            registry: Mutex::new(Registry::with_prefix("backroom")),
            rounds_started: Counter::default(),
            updates: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            // 10 ms .. ~80 s.
            aggregation_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            metric_releases: Family::default(),
            polls_waiting: Gauge::default(),
            rounds: Family::default(),
            model_version: Family::default(),
            nodes_enrolled: Gauge::default(),
            nodes_online: Gauge::default(),
        };
        {
            let mut r = telemetry.registry.lock().expect("telemetry registry");
            r.register(
                "rounds_started",
                "Training rounds started by this process",
                telemetry.rounds_started.clone(),
            );
            r.register(
                "updates",
                "Model updates received, by outcome and refusal reason",
                telemetry.updates.clone(),
            );
            r.register(
                "received_bytes",
                "Payload bytes received from nodes, by RPC",
                telemetry.bytes_received.clone(),
            );
            r.register(
                "sent_bytes",
                "Payload bytes sent, by RPC",
                telemetry.bytes_sent.clone(),
            );
            r.register(
                "aggregation_seconds",
                "Time to aggregate a round's updates, noise and sign the new version",
                telemetry.aggregation_seconds.clone(),
            );
            r.register(
                "metric_releases",
                "Noised shelf-metric releases received, by outcome",
                telemetry.metric_releases.clone(),
            );
            r.register(
                "polls_waiting",
                "Node long polls waiting for a task",
                telemetry.polls_waiting.clone(),
            );
            r.register(
                "rounds",
                "Rounds in the database, by lineage and state",
                telemetry.rounds.clone(),
            );
            r.register(
                "model_version",
                "Newest published model version, by lineage",
                telemetry.model_version.clone(),
            );
            r.register(
                "nodes_enrolled",
                "Nodes that have ever said hello",
                telemetry.nodes_enrolled.clone(),
            );
            r.register(
                "nodes_online",
                "Nodes seen in the last five minutes",
                telemetry.nodes_online.clone(),
            );
        }
        telemetry
    }
}

impl Telemetry {
    /// Counts an update refused for `reason` (an error message; its class is kept).
    pub fn update_refused(&self, class: &str) {
        self.updates
            .get_or_create(&vec![
                ("outcome", "refused".to_owned()),
                ("reason", class.to_owned()),
            ])
            .inc();
    }

    pub fn update_accepted(&self) {
        self.updates
            .get_or_create(&vec![
                ("outcome", "accepted".to_owned()),
                ("reason", String::new()),
            ])
            .inc();
    }

    pub fn received(&self, rpc: &'static str, bytes: usize) {
        self.bytes_received
            .get_or_create(&vec![("rpc", rpc.to_owned())])
            .inc_by(bytes as u64);
    }

    pub fn sent(&self, rpc: &'static str, bytes: usize) {
        self.bytes_sent
            .get_or_create(&vec![("rpc", rpc.to_owned())])
            .inc_by(bytes as u64);
    }

    pub fn metric_releases(&self, accepted: u32, duplicates: u32) {
        self.metric_releases
            .get_or_create(&vec![("outcome", "accepted".to_owned())])
            .inc_by(u64::from(accepted));
        self.metric_releases
            .get_or_create(&vec![("outcome", "duplicate".to_owned())])
            .inc_by(u64::from(duplicates));
    }
}

impl Core {
    /// The Prometheus text exposition: gauges refreshed from the database, then every family.
    pub async fn render_telemetry(&self) -> Result<String> {
        let rounds = self.store.round_state_counts().await?;
        let versions = self.store.list_versions("").await?;
        let nodes = self.store.list_nodes().await?;
        let t = &self.telemetry;
        // Refreshed and encoded under the registry lock: concurrent scrapes cannot interleave a
        // clear with an encode. No await below.
        let registry = t.registry.lock().expect("telemetry registry");
        t.rounds.clear();
        for (lineage, state, count) in rounds {
            t.rounds
                .get_or_create(&vec![("lineage", lineage), ("state", state)])
                .set(count);
        }
        t.model_version.clear();
        for v in &versions {
            let gauge = t
                .model_version
                .get_or_create(&vec![("lineage", v.lineage.clone())]);
            gauge.set(
                gauge
                    .get()
                    .max(i64::try_from(v.version).unwrap_or(i64::MAX)),
            );
        }
        let now = now_unix_ms();
        t.nodes_enrolled.set(nodes.len() as i64);
        t.nodes_online.set(
            nodes
                .iter()
                .filter(|n| now - n.last_seen_unix_ms <= ONLINE_WINDOW_MS)
                .count() as i64,
        );
        let mut out = String::new();
        encode(&mut out, &registry).map_err(|e| {
            crate::error::CoordinatorError::Internal(format!("cannot encode telemetry: {e}"))
        })?;
        Ok(out)
    }
}

/// Where an update was refused, with its class for the `reason` label: a few fixed words,
/// never a store or round id.
pub fn refusal_class(stage: RefusalStage, message: &str) -> &'static str {
    match stage {
        RefusalStage::Header => "header",
        RefusalStage::Transport => "transport",
        RefusalStage::Recording => "not_recorded",
        RefusalStage::Content => {
            if message.contains("exceeds the round's limit") {
                "clip_norm"
            } else if message.contains("is not finite") {
                "non_finite"
            } else if message.contains("SHA-256 mismatch") {
                "checksum"
            } else {
                "shape"
            }
        }
    }
}

/// The step of an upload that refused it.
#[derive(Clone, Copy, Debug)]
pub enum RefusalStage {
    /// Not sampled, round not training, wrong base version...
    Header,
    /// The stream broke.
    Transport,
    /// Values: length, NaN/Inf, checksum, clip norm.
    Content,
    /// Checked, but not recorded (late, duplicate).
    Recording,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classed_without_ids() {
        assert_eq!(
            refusal_class(
                RefusalStage::Content,
                "update norm 9.1 exceeds the round's limit 5 (clip norm 5, central noise)"
            ),
            "clip_norm"
        );
        assert_eq!(
            refusal_class(RefusalStage::Content, "update value 3 is not finite (NaN)"),
            "non_finite"
        );
        assert_eq!(
            refusal_class(RefusalStage::Header, "store-1 not sampled"),
            "header"
        );
    }

    #[test]
    fn the_exposition_carries_every_family() {
        let t = Telemetry::default();
        t.update_accepted();
        t.update_refused("clip_norm");
        t.received("upload_update", 1000);
        t.aggregation_seconds.observe(0.5);
        let mut out = String::new();
        encode(&mut out, &t.registry.lock().expect("registry")).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.contains("backroom_updates_total{outcome=\"refused\",reason=\"clip_norm\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("backroom_received_bytes_total{rpc=\"upload_update\"} 1000"),
            "{out}"
        );
        assert!(
            out.contains("backroom_aggregation_seconds_count 1"),
            "{out}"
        );
    }
}
