//! The node's durable privacy ledger: the zCDP budget spent on metric releases per UTC day.
//!
//! A day is the UTC day of the *data* (the window), not of the wall clock: every release about
//! day `D` is charged to `D`, whenever it is made, so the releases about any one day compose to
//! at most that day's budget. A window overlapping several days is charged to each of them.
//!
//! **Architecture Invariant:** checking the budget, charging it and queuing the release happen
//! in one `BEGIN IMMEDIATE` transaction, so no interleaving can spend more than a day's budget,
//! and a window is released (or refused) at most once, whatever the restarts and replays.

use std::ops::RangeInclusive;
use std::path::Path;

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::metrics_sync::{MetricQueue, QueueError};
use crate::release::NoisedRelease;

const SECS_PER_DAY: i64 = 86_400;
/// 1 when a window key was released or refused before, else 0.
const KNOWN_KEY: &str = "SELECT (SELECT COUNT(*) FROM metric_releases WHERE idempotency_key = ?1) \
     + (SELECT COUNT(*) FROM metric_refusals WHERE idempotency_key = ?1)";

/// The budget of one UTC day.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DayBudget {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub rho_spent: f64,
    pub rho_budget: f64,
    pub rho_remaining: f64,
    pub releases: u64,
    pub refused: u64,
}

/// What happened to a window handed to [`MetricQueue::record_release`].
#[derive(Clone, Debug, PartialEq)]
pub enum ReleaseOutcome {
    /// Charged and queued; the budget of the window's last day after the charge.
    Released(DayBudget),
    /// The budget of a day the window overlaps would be exceeded: dropped, never sent.
    Refused(DayBudget),
    /// The window was released or refused before (a replay after a restart): nothing changed.
    AlreadyRecorded,
}

/// UTC days a window `[start, start + secs)` overlaps.
pub fn utc_days(window_start_unix: i64, window_secs: u32) -> RangeInclusive<i64> {
    let last = window_start_unix.saturating_add(i64::from(window_secs.max(1)) - 1);
    window_start_unix.div_euclid(SECS_PER_DAY)..=last.div_euclid(SECS_PER_DAY)
}

/// `YYYY-MM-DD` of a day number (proleptic Gregorian, UTC).
pub fn day_to_date(day: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn day_budget(day: i64, rho_spent: f64, rho_budget: f64, releases: i64, refused: i64) -> DayBudget {
    DayBudget {
        day,
        date: day_to_date(day),
        rho_spent,
        rho_budget,
        rho_remaining: (rho_budget - rho_spent).max(0.0),
        releases: u64::try_from(releases).unwrap_or(0),
        refused: u64::try_from(refused).unwrap_or(0),
    }
}

impl MetricQueue {
    /// Whether a window with this key was already released or refused.
    pub async fn is_recorded(&self, key: &str) -> Result<bool, QueueError> {
        let known: i64 = sqlx::query_scalar(KNOWN_KEY)
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(known > 0)
    }

    /// Charges `release.rho` to every UTC day the window overlaps and queues the release, or
    /// refuses it when a day's spent ρ would exceed `rho_per_day`; atomically.
    pub async fn record_release(
        &self,
        key: &str,
        release: &NoisedRelease,
        rho_per_day: f64,
        now_unix_ms: i64,
    ) -> Result<ReleaseOutcome, QueueError> {
        let metrics = serde_json::to_string(&release.metrics).map_err(QueueError::Encode)?;
        let days = utc_days(release.window_start_unix, release.window_secs);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if self.is_recorded_in(&mut tx, key).await? {
            return Ok(ReleaseOutcome::AlreadyRecorded);
        }
        let mut fits = true;
        for day in days.clone() {
            let spent: Option<f64> =
                sqlx::query_scalar("SELECT rho_spent FROM privacy_ledger WHERE day = ?")
                    .bind(day)
                    .fetch_optional(&mut *tx)
                    .await?;
            if spent.unwrap_or(0.0) + release.rho > rho_per_day {
                fits = false;
            }
        }
        let (charge, released, refused) = if fits {
            (release.rho, 1, 0)
        } else {
            (0.0, 0, 1)
        };
        for day in days.clone() {
            sqlx::query(
                "INSERT INTO privacy_ledger (day, rho_spent, rho_budget, releases, refused) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (day) DO UPDATE SET \
                 rho_spent = rho_spent + ?2, rho_budget = ?3, releases = releases + ?4, \
                 refused = refused + ?5",
            )
            .bind(day)
            .bind(charge)
            .bind(rho_per_day)
            .bind(released)
            .bind(refused)
            .execute(&mut *tx)
            .await?;
        }
        if fits {
            sqlx::query(
                "INSERT INTO metric_releases (idempotency_key, camera_id, window_start_unix, \
                 window_secs, slots_per_frame, seconds_per_frame, rho, metrics, created_at, \
                 synced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            )
            .bind(key)
            .bind(i64::from(release.camera_id))
            .bind(release.window_start_unix)
            .bind(i64::from(release.window_secs))
            .bind(i64::from(release.slots_per_frame))
            .bind(i64::from(release.seconds_per_frame))
            .bind(release.rho)
            .bind(metrics)
            .bind(now_unix_ms)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO metric_refusals (idempotency_key, window_start_unix, rho, refused_at) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(key)
            .bind(release.window_start_unix)
            .bind(release.rho)
            .bind(now_unix_ms)
            .execute(&mut *tx)
            .await?;
        }
        let last_day = *days.end();
        let row = sqlx::query(
            "SELECT rho_spent, rho_budget, releases, refused FROM privacy_ledger WHERE day = ?",
        )
        .bind(last_day)
        .fetch_one(&mut *tx)
        .await?;
        let budget = day_budget(
            last_day,
            row.try_get("rho_spent")?,
            row.try_get("rho_budget")?,
            row.try_get("releases")?,
            row.try_get("refused")?,
        );
        tx.commit().await?;
        Ok(if fits {
            ReleaseOutcome::Released(budget)
        } else {
            ReleaseOutcome::Refused(budget)
        })
    }

    async fn is_recorded_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        key: &str,
    ) -> Result<bool, QueueError> {
        let known: i64 = sqlx::query_scalar(KNOWN_KEY)
            .bind(key)
            .fetch_one(&mut **tx)
            .await?;
        Ok(known > 0)
    }

    /// The ledger of one day (nothing spent when the day has no entry), against `rho_per_day`
    /// when the day has no entry yet.
    pub async fn day_budget(&self, day: i64, rho_per_day: f64) -> Result<DayBudget, QueueError> {
        let row = sqlx::query(
            "SELECT rho_spent, rho_budget, releases, refused FROM privacy_ledger WHERE day = ?",
        )
        .bind(day)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => day_budget(day, 0.0, rho_per_day, 0, 0),
            Some(row) => day_budget(
                day,
                row.try_get("rho_spent")?,
                row.try_get("rho_budget")?,
                row.try_get("releases")?,
                row.try_get("refused")?,
            ),
        })
    }

    /// Every day in the ledger, oldest first.
    pub async fn ledger(&self) -> Result<Vec<DayBudget>, QueueError> {
        read_ledger(&self.pool).await
    }
}

async fn read_ledger(pool: &sqlx::SqlitePool) -> Result<Vec<DayBudget>, QueueError> {
    let rows = sqlx::query(
        "SELECT day, rho_spent, rho_budget, releases, refused FROM privacy_ledger ORDER BY day",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(day_budget(
                row.try_get("day")?,
                row.try_get("rho_spent")?,
                row.try_get("rho_budget")?,
                row.try_get("releases")?,
                row.try_get("refused")?,
            ))
        })
        .collect()
}

/// Reads the ledger of the node whose data directory is `data_dir`, read-only (the node may be
/// running). Fails when the directory holds no node database.
pub async fn read_ledger_of(data_dir: &Path) -> Result<Vec<DayBudget>, QueueError> {
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join("node.db"))
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let ledger = read_ledger(&pool).await;
    pool.close().await;
    ledger
}
