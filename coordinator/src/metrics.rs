//! Shelf metrics from the stores: noised releases only.
//!
//! Each store releases every closed window through OpenDP's Gaussian mechanism on the node and
//! sends the release, never a raw count. The coordinator checks that a batch looks like such a
//! release (known metric names, finite values, a positive noise scale, a positive ρ that covers
//! the declared noise), stores it once per idempotency key, and serves the noised values.
//! Summing releases across stores and windows, and deriving occupancy from them, is
//! post-processing: it costs no privacy budget. Suppressed cells stay suppressed, never zero;
//! totals sum the released cells and count the suppressed ones. Suppressed cells are the ones
//! whose noise came out low, so a total over many suppressed cells is biased upward: read it with
//! its suppressed count.
//!
//! The coordinator cannot check that a node really drew the noise it declares: metric privacy is
//! enforced where the data lives, and a node that lied would only expose its own store.

use std::collections::BTreeSet;

use backroom_proto::v1 as pb;
use tracing::info;

use crate::core::Core;
use crate::error::{CoordinatorError, Result};
use crate::registry::now_unix_ms;
use crate::store::{MetricValueRow, ReleaseRow};

/// Metrics a release may carry.
pub const KNOWN_METRICS: [&str; 3] = ["frames", "out_of_stock_events", "out_of_stock_minutes"];
/// Most batches in one `SyncMetrics` call.
pub const MAX_BATCHES_PER_CALL: usize = 1000;
/// Longest window a node may configure (7 days).
pub const MAX_WINDOW_SECS: u32 = 7 * 86_400;
/// Largest ρ of one release the coordinator accepts (the nodes' own limit).
pub const MAX_RHO: f64 = 100.0;

impl Core {
    /// Stores noised releases exactly once each. Returns (accepted, duplicates).
    pub async fn sync_metrics(
        &self,
        store_id: &str,
        batches: &[pb::MetricBatch],
    ) -> Result<(u32, u32)> {
        if batches.len() > MAX_BATCHES_PER_CALL {
            return Err(CoordinatorError::InvalidArgument(format!(
                "{} batches in one call; send at most {MAX_BATCHES_PER_CALL}",
                batches.len()
            )));
        }
        for (i, b) in batches.iter().enumerate() {
            validate_batch(b)
                .map_err(|m| CoordinatorError::InvalidArgument(format!("batch {i}: {m}")))?;
        }
        let (mut accepted, mut duplicates) = (0, 0);
        let now = now_unix_ms();
        for b in batches {
            if self
                .store
                .insert_metric_release(&release_row(store_id, b), now)
                .await?
            {
                accepted += 1;
            } else {
                duplicates += 1;
            }
        }
        Ok((accepted, duplicates))
    }

    /// Noised releases with `from <= window_start < to` (0 = unbounded), their totals, and
    /// totals per group when `group_by` names one ([`GroupBy`]). `show` maps a store id to what
    /// the caller may see (the id, or an opaque token when `tokens`).
    pub async fn query_metrics_for(
        &self,
        by: &str,
        query: &pb::QueryMetricsRequest,
        show: &(dyn Fn(&str) -> String + Send + Sync),
        tokens: bool,
    ) -> Result<pb::QueryMetricsResponse> {
        let group_by = GroupBy::parse(&query.group_by)?;
        // Groups are formed from real ids, before they are hidden.
        let response = self
            .query_metrics(by, query.from_unix, query.to_unix)
            .await?;
        let groups = group_by
            .map(|g| group_rows(&response.rows, g, &self.settings.store_groups, show))
            .unwrap_or_default();
        let mut response = response;
        for row in &mut response.rows {
            row.store_id = show(&row.store_id);
        }
        response.groups = groups;
        response.store_tokens = tokens;
        Ok(response)
    }

    /// Noised releases with `from <= window_start < to` (0 = unbounded) and their totals.
    pub async fn query_metrics(
        &self,
        by: &str,
        from: i64,
        to: i64,
    ) -> Result<pb::QueryMetricsResponse> {
        if from != 0 && to != 0 && from >= to {
            return Err(CoordinatorError::InvalidArgument(
                "from_unix must be before to_unix".into(),
            ));
        }
        let rows: Vec<pb::MetricRow> = self
            .store
            .metric_releases(from, to)
            .await?
            .into_iter()
            .map(row_to_proto)
            .collect();
        info!(by, rows = rows.len(), "metrics queried");
        Ok(summarize(rows))
    }
}

/// Checks that a batch is a noised release; the message names the first problem.
pub fn validate_batch(b: &pb::MetricBatch) -> std::result::Result<(), String> {
    if b.idempotency_key.is_empty() || b.idempotency_key.len() > 200 {
        return Err("idempotency_key must have 1 to 200 characters".into());
    }
    if b.window_secs == 0 || b.window_secs > MAX_WINDOW_SECS {
        return Err(format!(
            "window_secs must be in 1..={MAX_WINDOW_SECS}, got {}",
            b.window_secs
        ));
    }
    if b.slots_per_frame == 0 || b.seconds_per_frame == 0 {
        return Err("slots_per_frame and seconds_per_frame must be at least 1".into());
    }
    if !(b.rho.is_finite() && b.rho > 0.0 && b.rho <= MAX_RHO) {
        return Err(format!(
            "rho must be above 0 and at most {MAX_RHO} (a noised release has a privacy cost), got {}",
            b.rho
        ));
    }
    if b.metrics.is_empty() {
        return Err("no noised metrics: a batch must carry a noised release".into());
    }
    let mut seen = BTreeSet::new();
    let mut implied_rho = 0.0;
    for m in &b.metrics {
        if !KNOWN_METRICS.contains(&m.name.as_str()) {
            return Err(format!(
                "unknown metric {:?}; known: {}",
                m.name,
                KNOWN_METRICS.join(", ")
            ));
        }
        if !seen.insert(m.name.as_str()) {
            return Err(format!("metric {:?} appears twice", m.name));
        }
        if !(m.noise_scale.is_finite() && m.noise_scale > 0.0) {
            return Err(format!(
                "{}: noise_scale must be positive and finite (only noised values are accepted), got {}",
                m.name, m.noise_scale
            ));
        }
        if !(m.sensitivity.is_finite() && m.sensitivity > 0.0) {
            return Err(format!(
                "{}: sensitivity must be positive and finite, got {}",
                m.name, m.sensitivity
            ));
        }
        match (m.suppressed, m.value) {
            (true, Some(_)) => return Err(format!("{}: a suppressed metric has no value", m.name)),
            (false, None) => return Err(format!("{}: a released metric needs a value", m.name)),
            (false, Some(v)) if !v.is_finite() => {
                return Err(format!("{}: value must be finite, got {v}", m.name));
            }
            _ => {}
        }
        // The Gaussian mechanism's zCDP cost: (sensitivity / scale)^2 / 2.
        implied_rho += (m.sensitivity / m.noise_scale).powi(2) / 2.0;
    }
    // The declared ρ must pay for the declared noise (with room for floating-point rounding).
    if implied_rho > b.rho * (1.0 + 1e-6) {
        return Err(format!(
            "noise too small for the declared rho: the metrics cost {implied_rho:.6}, rho is {}",
            b.rho
        ));
    }
    Ok(())
}

fn release_row(store_id: &str, b: &pb::MetricBatch) -> ReleaseRow {
    ReleaseRow {
        store_id: store_id.to_owned(),
        idempotency_key: b.idempotency_key.clone(),
        camera_id: b.camera_id,
        window_start_unix: b.window_start_unix,
        window_secs: b.window_secs,
        slots_per_frame: b.slots_per_frame,
        seconds_per_frame: b.seconds_per_frame,
        rho: b.rho,
        metrics: b
            .metrics
            .iter()
            .map(|m| MetricValueRow {
                name: m.name.clone(),
                value: if m.suppressed { None } else { m.value },
                suppressed: m.suppressed,
                noise_scale: m.noise_scale,
                sensitivity: m.sensitivity,
            })
            .collect(),
    }
}

/// Slot-minutes a window observed, from its noised frame count.
fn observed_slot_minutes(frames: f64, slots_per_frame: u32, seconds_per_frame: u32) -> f64 {
    frames * f64::from(slots_per_frame) * f64::from(seconds_per_frame) / 60.0
}

fn released(metrics: &[pb::NoisedMetric], name: &str) -> Option<f64> {
    metrics
        .iter()
        .find(|m| m.name == name && !m.suppressed)
        .and_then(|m| m.value)
}

/// (out-of-stock minutes, observed slot-minutes) of a row, when both are released.
fn occupancy_parts(row: &pb::MetricRow) -> Option<(f64, f64)> {
    let frames = released(&row.metrics, "frames")?;
    let minutes = released(&row.metrics, "out_of_stock_minutes")?;
    let observed = observed_slot_minutes(frames, row.slots_per_frame, row.seconds_per_frame);
    (observed > 0.0).then_some((minutes, observed))
}

fn occupancy(empty_minutes: f64, observed_minutes: f64) -> f64 {
    (1.0 - empty_minutes / observed_minutes).clamp(0.0, 1.0)
}

/// The wire form of a stored release, with its derived occupancy.
pub fn row_to_proto(row: ReleaseRow) -> pb::MetricRow {
    let mut out = pb::MetricRow {
        store_id: row.store_id,
        window_start_unix: row.window_start_unix,
        window_secs: row.window_secs,
        camera_id: row.camera_id,
        slots_per_frame: row.slots_per_frame,
        seconds_per_frame: row.seconds_per_frame,
        rho: row.rho,
        metrics: row
            .metrics
            .into_iter()
            .map(|m| pb::NoisedMetric {
                name: m.name,
                value: m.value,
                suppressed: m.suppressed,
                noise_scale: m.noise_scale,
                sensitivity: m.sensitivity,
            })
            .collect(),
        occupancy: None,
    };
    out.occupancy = occupancy_parts(&out).map(|(empty, observed)| occupancy(empty, observed));
    out
}

/// Rows with per-metric totals: sums of released values, the standard deviation of their noise,
/// and how many windows were released or suppressed.
pub fn summarize(rows: Vec<pb::MetricRow>) -> pb::QueryMetricsResponse {
    let totals = KNOWN_METRICS
        .iter()
        .map(|&name| {
            let mut total = pb::MetricTotal {
                name: name.to_owned(),
                ..pb::MetricTotal::default()
            };
            let mut variance = 0.0;
            for m in rows
                .iter()
                .flat_map(|r| &r.metrics)
                .filter(|m| m.name == name)
            {
                match (m.suppressed, m.value) {
                    (false, Some(value)) => {
                        total.value += value;
                        variance += m.noise_scale * m.noise_scale;
                        total.windows_released += 1;
                    }
                    _ => total.windows_suppressed += 1,
                }
            }
            total.noise_std = variance.sqrt();
            total
        })
        .collect();
    let (empty, observed) = rows
        .iter()
        .filter_map(occupancy_parts)
        .fold((0.0, 0.0), |(e, o), (de, dob)| (e + de, o + dob));
    let stores = rows
        .iter()
        .map(|r| &r.store_id)
        .collect::<BTreeSet<_>>()
        .len();
    pb::QueryMetricsResponse {
        groups: Vec::new(),
        store_tokens: false,
        totals,
        occupancy: (observed > 0.0).then(|| occupancy(empty, observed)),
        stores: u32::try_from(stores).unwrap_or(u32::MAX),
        rows,
    }
}

/// How a metric query's rows are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Store,
    /// The coordinator's `[store_groups]`; a store in none is in `ungrouped`.
    Group,
    /// UTC hour of day of the window's start, over all days (the daily profile).
    Hour,
    /// UTC date of the window's start.
    Day,
}

impl GroupBy {
    pub const NAMES: [&str; 4] = ["store", "group", "hour", "day"];

    /// `None` for "" (no groups).
    pub fn parse(text: &str) -> Result<Option<Self>> {
        Ok(Some(match text {
            "" => return Ok(None),
            "store" => GroupBy::Store,
            "group" => GroupBy::Group,
            "hour" => GroupBy::Hour,
            "day" => GroupBy::Day,
            other => {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "group_by {other:?}: use one of {}",
                    Self::NAMES.join(", ")
                )));
            }
        }))
    }
}

/// Totals of each group of `rows`, in key order. Only post-processing of released values.
pub fn group_rows(
    rows: &[pb::MetricRow],
    by: GroupBy,
    groups: &std::collections::BTreeMap<String, String>,
    show: &(dyn Fn(&str) -> String + Send + Sync),
) -> Vec<pb::MetricGroup> {
    let mut keyed: std::collections::BTreeMap<String, Vec<pb::MetricRow>> = Default::default();
    for row in rows {
        let key = match by {
            GroupBy::Store => show(&row.store_id),
            GroupBy::Group => groups
                .get(&row.store_id)
                .cloned()
                .unwrap_or_else(|| "ungrouped".to_owned()),
            GroupBy::Hour => format!("{:02}:00", row.window_start_unix.rem_euclid(86_400) / 3600),
            GroupBy::Day => time::OffsetDateTime::from_unix_timestamp(row.window_start_unix)
                .map(|t| t.date().to_string())
                .unwrap_or_else(|_| "invalid-date".to_owned()),
        };
        keyed.entry(key).or_default().push(row.clone());
    }
    keyed
        .into_iter()
        .map(|(key, rows)| {
            let occupancies: Vec<f64> = rows.iter().filter_map(|r| r.occupancy).collect();
            let summary = summarize(rows);
            pb::MetricGroup {
                key,
                totals: summary.totals,
                occupancy: summary.occupancy,
                occupancy_min: occupancies.iter().copied().reduce(f64::min),
                occupancy_max: occupancies.iter().copied().reduce(f64::max),
                stores: summary.stores,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
