//! Noised metric releases as stored: one row per release, one per released metric.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{BindOptionalF64, Store};
use crate::error::Result;

fn to_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// One noised metric of a release.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValueRow {
    pub name: String,
    /// `None` when suppressed.
    pub value: Option<f64>,
    pub suppressed: bool,
    pub noise_scale: f64,
    pub sensitivity: f64,
}

/// A store's noised release of one window.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseRow {
    pub store_id: String,
    pub idempotency_key: String,
    pub camera_id: u32,
    pub window_start_unix: i64,
    pub window_secs: u32,
    pub slots_per_frame: u32,
    pub seconds_per_frame: u32,
    pub rho: f64,
    pub metrics: Vec<MetricValueRow>,
}

impl Store {
    /// Stores a release unless this store already sent one with the same key. Returns whether it
    /// was new.
    pub async fn insert_metric_release(&self, row: &ReleaseRow, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO metric_releases (store_id, idempotency_key, camera_id, \
             window_start_unix, window_secs, slots_per_frame, seconds_per_frame, rho, \
             received_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&row.store_id)
        .bind(&row.idempotency_key)
        .bind(i64::from(row.camera_id))
        .bind(row.window_start_unix)
        .bind(i64::from(row.window_secs))
        .bind(i64::from(row.slots_per_frame))
        .bind(i64::from(row.seconds_per_frame))
        .bind(row.rho)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            return Ok(false);
        }
        for metric in &row.metrics {
            sqlx::query(
                "INSERT INTO metric_release_values (store_id, idempotency_key, name, value, \
                 suppressed, noise_scale, sensitivity) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&row.store_id)
            .bind(&row.idempotency_key)
            .bind(&metric.name)
            .bind_optional_f64(metric.value)
            .bind(i64::from(metric.suppressed))
            .bind(metric.noise_scale)
            .bind(metric.sensitivity)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Releases with `from <= window_start < to` (0 = unbounded), oldest first.
    pub async fn metric_releases(&self, from: i64, to: i64) -> Result<Vec<ReleaseRow>> {
        const RANGE: &str = "($1 = 0 OR r.window_start_unix >= $1) \
                             AND ($2 = 0 OR r.window_start_unix < $2)";
        let releases = sqlx::query(&format!(
            "SELECT * FROM metric_releases r WHERE {RANGE} \
             ORDER BY r.window_start_unix, r.store_id, r.camera_id"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let values = sqlx::query(&format!(
            "SELECT v.* FROM metric_release_values v JOIN metric_releases r \
             ON r.store_id = v.store_id AND r.idempotency_key = v.idempotency_key \
             WHERE {RANGE} ORDER BY v.name"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut by_release: BTreeMap<(String, String), Vec<MetricValueRow>> = BTreeMap::new();
        for v in &values {
            let suppressed = v.try_get::<i64, _>("suppressed")? != 0;
            by_release
                .entry((v.try_get("store_id")?, v.try_get("idempotency_key")?))
                .or_default()
                .push(MetricValueRow {
                    name: v.try_get("name")?,
                    value: if suppressed {
                        None
                    } else {
                        v.try_get("value")?
                    },
                    suppressed,
                    noise_scale: v.try_get("noise_scale")?,
                    sensitivity: v.try_get("sensitivity")?,
                });
        }
        releases
            .iter()
            .map(|r| {
                let store_id: String = r.try_get("store_id")?;
                let idempotency_key: String = r.try_get("idempotency_key")?;
                let metrics = by_release
                    .remove(&(store_id.clone(), idempotency_key.clone()))
                    .unwrap_or_default();
                Ok(ReleaseRow {
                    store_id,
                    idempotency_key,
                    camera_id: to_u32(r.try_get("camera_id")?),
                    window_start_unix: r.try_get("window_start_unix")?,
                    window_secs: to_u32(r.try_get("window_secs")?),
                    slots_per_frame: to_u32(r.try_get("slots_per_frame")?),
                    seconds_per_frame: to_u32(r.try_get("seconds_per_frame")?),
                    rho: r.try_get("rho")?,
                    metrics,
                })
            })
            .collect()
    }
}
