//! The local queue of noised metric releases (SQLite) and the loop that drains it to the
//! coordinator.
//!
//! **Architecture Invariant:** a release is marked synced only after the coordinator acknowledged
//! it, and every send carries the window's idempotency key, so a crash between the two re-sends a
//! batch that the coordinator counts once: nothing is lost, nothing is counted twice. Only noised
//! releases ([`crate::release`]) are queued; raw window counts never reach the database.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backroom_proto::v1::{MetricBatch, NoisedMetric, SyncMetricsRequest};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tracing::{info, warn};

use crate::release::NoisedRelease;
use crate::transport::{Backoff, RPC_TIMEOUT, Shutdown, request, sleep_or_shutdown};
use crate::{NodeContext, now_unix_ms};

/// Largest number of releases sent in one `SyncMetrics` call.
pub const SYNC_BATCH_LIMIT: u32 = 100;
/// How often an idle sync loop looks at the queue even without a new window.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Errors of the local database.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("local database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("local database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot encode a release: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("stored release {key} is unreadable: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A queued release with its key.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedRelease {
    pub idempotency_key: String,
    pub release: NoisedRelease,
}

/// `"{node_id}:{camera_id}:{window_start}"`: unique per store, camera and window.
pub fn idempotency_key(node_id: &str, camera_id: u32, window_start_unix: i64) -> String {
    format!("{node_id}:{camera_id}:{window_start_unix}")
}

/// The node's SQLite database (`<data_dir>/node.db`): the queue of noised releases, the privacy
/// ledger ([`crate::ledger`]) and the node's identity. Raw window counts are never stored.
#[derive(Clone, Debug)]
pub struct MetricQueue {
    pub(crate) pool: SqlitePool,
}

impl MetricQueue {
    /// Opens (creating if needed) `<data_dir>/node.db` and runs the migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, QueueError> {
        std::fs::create_dir_all(data_dir).map_err(|source| QueueError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("node.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Deleted rows (the raw windows an older version queued) are overwritten, not left
            // in free pages.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!().run(&pool).await?;
        Ok(Self { pool })
    }

    /// The oldest releases not yet acknowledged.
    pub async fn unsynced(&self, limit: u32) -> Result<Vec<QueuedRelease>, QueueError> {
        let rows = sqlx::query(
            "SELECT idempotency_key, camera_id, window_start_unix, window_secs, slots_per_frame, \
             seconds_per_frame, rho, metrics FROM metric_releases WHERE synced_at IS NULL \
             ORDER BY window_start_unix, idempotency_key LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get("idempotency_key")?;
                let metrics: String = row.try_get("metrics")?;
                let metrics =
                    serde_json::from_str(&metrics).map_err(|source| QueueError::Decode {
                        key: key.clone(),
                        source,
                    })?;
                Ok(QueuedRelease {
                    idempotency_key: key,
                    release: NoisedRelease {
                        camera_id: from_i64(row.try_get("camera_id")?),
                        window_start_unix: row.try_get("window_start_unix")?,
                        window_secs: from_i64(row.try_get("window_secs")?),
                        slots_per_frame: from_i64(row.try_get("slots_per_frame")?),
                        seconds_per_frame: from_i64(row.try_get("seconds_per_frame")?),
                        rho: row.try_get("rho")?,
                        metrics,
                    },
                })
            })
            .collect()
    }

    /// Marks releases as acknowledged; returns how many changed state.
    pub async fn mark_synced(&self, keys: &[String], now_unix_ms: i64) -> Result<u64, QueueError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut query: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("UPDATE metric_releases SET synced_at = ");
        query.push_bind(now_unix_ms);
        query.push(" WHERE synced_at IS NULL AND idempotency_key IN (");
        let mut list = query.separated(", ");
        for key in keys {
            list.push_bind(key);
        }
        list.push_unseparated(")");
        let result = query.build().execute(&self.pool).await?;
        Ok(result.rows_affected())
    }

    /// Number of releases waiting to be sent.
    pub async fn pending_count(&self) -> Result<u64, QueueError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM metric_releases WHERE synced_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(from_i64(count))
    }

    /// The node id remembered from the last `Hello`.
    pub async fn stored_node_id(&self) -> Result<Option<String>, QueueError> {
        Ok(
            sqlx::query_scalar("SELECT node_id FROM node_identity WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn store_node_id(&self, node_id: &str, now_unix_ms: i64) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT INTO node_identity (id, node_id, updated_at) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET node_id = excluded.node_id, updated_at = excluded.updated_at",
        )
        .bind(node_id)
        .bind(now_unix_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Stored values were written from unsigned ones; a negative one can only come from outside
/// tampering and reads as 0.
fn from_i64<T: TryFrom<i64> + Default>(value: i64) -> T {
    T::try_from(value).unwrap_or_default()
}

/// The wire form of a queued release.
pub fn to_batch(queued: &QueuedRelease) -> MetricBatch {
    let r = &queued.release;
    MetricBatch {
        idempotency_key: queued.idempotency_key.clone(),
        window_start_unix: r.window_start_unix,
        window_secs: r.window_secs,
        camera_id: r.camera_id,
        slots_per_frame: r.slots_per_frame,
        seconds_per_frame: r.seconds_per_frame,
        rho: r.rho,
        metrics: r
            .metrics
            .iter()
            .map(|m| NoisedMetric {
                name: m.name.clone(),
                value: m.value,
                suppressed: m.suppressed,
                noise_scale: m.noise_scale,
                sensitivity: m.sensitivity,
            })
            .collect(),
    }
}

/// Drains the queue to the coordinator until shutdown, retrying with backoff while it is away.
pub(crate) async fn run_metric_sync(
    ctx: Arc<NodeContext>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::for_coordinator();
    loop {
        let queued = match ctx.queue.unsynced(SYNC_BATCH_LIMIT).await {
            Ok(queued) => queued,
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(
                    attempt = backoff.attempt(),
                    "cannot read the metric queue: {error}"
                );
                ctx.set_error(format!("cannot read the metric queue: {error}"));
                if sleep_or_shutdown(delay, &mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        if queued.is_empty() {
            tokio::select! {
                _ = shutdown.triggered() => return Ok(()),
                _ = ctx.windows_ready.notified() => {}
                _ = tokio::time::sleep(IDLE_RECHECK) => {}
            }
            continue;
        }
        let message = SyncMetricsRequest {
            batches: queued.iter().map(to_batch).collect(),
        };
        let mut client = ctx.client.clone();
        let sent = tokio::select! {
            _ = shutdown.triggered() => return Ok(()),
            r = client.sync_metrics(request(message, RPC_TIMEOUT)) => r,
        };
        match sent {
            Ok(response) => {
                let response = response.into_inner();
                let keys: Vec<String> = queued.into_iter().map(|q| q.idempotency_key).collect();
                match ctx.queue.mark_synced(&keys, now_unix_ms()).await {
                    Ok(marked) => {
                        backoff.reset();
                        info!(
                            sent = keys.len(),
                            accepted = response.accepted,
                            duplicates = response.duplicates,
                            "metric windows synced"
                        );
                        ctx.update_status(|s| s.windows_synced += marked);
                    }
                    Err(error) => {
                        // The coordinator has them; a re-send is counted once thanks to the keys.
                        warn!("cannot mark metric windows as synced: {error}");
                        ctx.set_error(format!("cannot mark metric windows as synced: {error}"));
                        if sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await {
                            return Ok(());
                        }
                    }
                }
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(
                    attempt = backoff.attempt(),
                    queued = queued.len(),
                    delay_ms = delay.as_millis() as u64,
                    "metric sync failed; windows stay queued: {}",
                    crate::describe_status(&status)
                );
                ctx.set_error(format!(
                    "metric sync failed: {}",
                    crate::describe_status(&status)
                ));
                if sleep_or_shutdown(delay, &mut shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}
