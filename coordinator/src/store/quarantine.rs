//! Quarantined updates: those that failed a content check after their header was accepted.
//! Kept for forensics; nothing here is ever read by aggregation (see `round_updates`).

use sqlx::Row;

use super::{Store, to_i64, to_u64};
use crate::error::Result;

/// One quarantined update as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineRow {
    pub round_id: String,
    pub node_id: String,
    /// Why the update was refused (the error the node was told).
    pub reason: String,
    /// Bytes received before the refusal, including the chunk that failed.
    pub received_bytes: u64,
    /// SHA-256 (hex) of the bytes received.
    pub sha256: String,
    /// Where the bytes received are kept, if they are.
    pub blob_path: Option<String>,
    pub received_unix_ms: i64,
}

impl Store {
    pub async fn insert_quarantined(&self, row: &QuarantineRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO quarantined_updates (round_id, node_id, reason, received_bytes, sha256, \
             blob_path, received_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.round_id)
        .bind(&row.node_id)
        .bind(&row.reason)
        .bind(to_i64(row.received_bytes))
        .bind(&row.sha256)
        .bind(row.blob_path.as_deref())
        .bind(row.received_unix_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// How many quarantined updates of `node_id` in `round_id` have their bytes kept.
    pub async fn count_quarantined_blobs(&self, round_id: &str, node_id: &str) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM quarantined_updates WHERE round_id = $1 AND node_id = $2 \
             AND blob_path IS NOT NULL",
        )
        .bind(round_id)
        .bind(node_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u64(count))
    }

    /// Quarantined updates, oldest first: of one round, or of all rounds.
    pub async fn list_quarantined(&self, round_id: Option<&str>) -> Result<Vec<QuarantineRow>> {
        let rows = match round_id {
            Some(round_id) => {
                sqlx::query("SELECT * FROM quarantined_updates WHERE round_id = $1 ORDER BY id")
                    .bind(round_id)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM quarantined_updates ORDER BY id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(QuarantineRow {
                    round_id: r.try_get("round_id")?,
                    node_id: r.try_get("node_id")?,
                    reason: r.try_get("reason")?,
                    received_bytes: to_u64(r.try_get("received_bytes")?),
                    sha256: r.try_get("sha256")?,
                    blob_path: r.try_get("blob_path")?,
                    received_unix_ms: r.try_get("received_unix_ms")?,
                })
            })
            .collect()
    }
}
