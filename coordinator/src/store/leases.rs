//! Round leases and the change feed: what lets several coordinator replicas share one database
//! (see `migrations/*/0008_round_leases.sql`).

use super::Store;
use crate::error::Result;

impl Store {
    /// Takes `round_id`'s lease for `owner` until `expires_unix_ms`, or renews it: when there is
    /// none, when `owner` holds it, or when it expired by `now`. True when `owner` holds it
    /// afterwards.
    pub async fn acquire_round_lease(
        &self,
        round_id: &str,
        owner: &str,
        now: i64,
        expires_unix_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO round_leases (round_id, owner, expires_unix_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (round_id) DO UPDATE SET owner = excluded.owner, \
             expires_unix_ms = excluded.expires_unix_ms \
             WHERE round_leases.owner = excluded.owner OR round_leases.expires_unix_ms <= $4",
        )
        .bind(round_id)
        .bind(owner)
        .bind(expires_unix_ms)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up `owner`'s lease on `round_id` (nothing when another holds it).
    pub async fn release_round_lease(&self, round_id: &str, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM round_leases WHERE round_id = $1 AND owner = $2")
            .bind(round_id)
            .bind(owner)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The holder of `round_id`'s lease and when it expires, if any.
    pub async fn round_lease(&self, round_id: &str) -> Result<Option<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT owner, expires_unix_ms FROM round_leases WHERE round_id = $1")
                .bind(round_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Unfinished rounds whose lease is missing or expired at `now`, oldest first: rounds no
    /// replica drives.
    pub async fn unleased_unfinished_rounds(&self, now: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT r.round_id FROM rounds r \
             WHERE r.state NOT IN ('published', 'failed', 'cancelled') \
             AND NOT EXISTS (SELECT 1 FROM round_leases l WHERE l.round_id = r.round_id \
             AND l.expires_unix_ms > $1) ORDER BY r.created_unix_ms",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Counts one more change in the feed; returns the feed's generation after it.
    pub async fn bump_change_feed(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "UPDATE change_feed SET generation = generation + 1 WHERE id = 1 RETURNING generation",
        )
        .fetch_one(&self.writer)
        .await?)
    }

    /// The change feed's generation.
    pub async fn change_feed(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT generation FROM change_feed WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
