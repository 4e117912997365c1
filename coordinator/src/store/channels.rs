//! Rollout channels (`stable`, `canary`) per lineage.

use sqlx::Row;

use super::{Store, VersionRow, insert_version, to_i64, to_u64};
use crate::error::{CoordinatorError, Result};

/// A channel's target.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelRow {
    pub version: u64,
    pub percent: u32,
    pub updated_by: String,
    pub updated_unix_ms: i64,
}

/// Both channels of a lineage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Channels {
    pub stable: Option<ChannelRow>,
    pub canary: Option<ChannelRow>,
}

impl Channels {
    /// The version a store should run: the canary's when it reaches the store, else stable's.
    /// `None` when the lineage has no stable version yet.
    pub fn offered(&self, lineage: &str, node_id: &str) -> Option<u64> {
        if let Some(canary) = &self.canary
            && crate::rollout::in_canary(lineage, node_id, canary.percent)
        {
            return Some(canary.version);
        }
        self.stable.as_ref().map(|s| s.version)
    }
}

impl Store {
    pub async fn channels(&self, lineage: &str) -> Result<Channels> {
        let rows = sqlx::query("SELECT * FROM model_channels WHERE lineage = $1")
            .bind(lineage)
            .fetch_all(&self.pool)
            .await?;
        let mut channels = Channels::default();
        for row in rows {
            let target = ChannelRow {
                version: to_u64(row.try_get("version")?),
                percent: u32::try_from(row.try_get::<i64, _>("percent")?).unwrap_or(100),
                updated_by: row.try_get("updated_by")?,
                updated_unix_ms: row.try_get("updated_unix_ms")?,
            };
            match row.try_get::<String, _>("channel")?.as_str() {
                "stable" => channels.stable = Some(target),
                _ => channels.canary = Some(target),
            }
        }
        Ok(channels)
    }

    /// Points `stable` at `version` if it is newer than stable's current version (rounds
    /// publishing straight to stable, the initial version).
    pub async fn advance_stable(
        &self,
        lineage: &str,
        version: u64,
        by: &str,
        now: i64,
    ) -> Result<()> {
        advance_stable(&self.writer, lineage, version, by, now).await
    }

    /// Points a channel at an existing version. Stable never moves backwards (that is what
    /// `rollback` is for); a canary must be newer than stable, and is cleared when stable
    /// reaches it.
    pub async fn promote(
        &self,
        lineage: &str,
        version: u64,
        canary_percent: Option<u32>,
        by: &str,
        now: i64,
    ) -> Result<Channels> {
        // A write transaction: reading the current channels and writing the new ones cannot be
        // split by another writer.
        let mut tx = self.begin_write().await?;
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM model_versions WHERE lineage = $1 AND version = $2",
        )
        .bind(lineage)
        .bind(to_i64(version))
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Err(CoordinatorError::NotFound(format!(
                "lineage {lineage:?} has no version {version}"
            )));
        }
        let stable: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM model_channels WHERE lineage = $1 AND channel = 'stable'",
        )
        .bind(lineage)
        .fetch_optional(&mut *tx)
        .await?;
        let stable = stable.map_or(0, to_u64);
        match canary_percent {
            None => {
                if version < stable {
                    return Err(CoordinatorError::FailedPrecondition(format!(
                        "stable is at version {stable}; it never moves back to {version} (use \
                         `backroom models rollback {lineage} {version}`, which publishes a new \
                         version with those weights)"
                    )));
                }
                advance_stable(&mut *tx, lineage, version, by, now).await?;
                sqlx::query(
                    "DELETE FROM model_channels WHERE lineage = $1 AND channel = 'canary' \
                     AND version <= $2",
                )
                .bind(lineage)
                .bind(to_i64(version))
                .execute(&mut *tx)
                .await?;
            }
            Some(percent) => {
                if !(1..=100).contains(&percent) {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "canary percent must be 1 to 100, got {percent}"
                    )));
                }
                if version <= stable {
                    return Err(CoordinatorError::FailedPrecondition(format!(
                        "version {version} is not newer than stable ({stable}); a canary must be"
                    )));
                }
                sqlx::query(
                    "INSERT INTO model_channels (lineage, channel, version, percent, updated_by, \
                     updated_unix_ms) VALUES ($1, 'canary', $2, $3, $4, $5) \
                     ON CONFLICT (lineage, channel) DO UPDATE SET version = excluded.version, \
                     percent = excluded.percent, updated_by = excluded.updated_by, \
                     updated_unix_ms = excluded.updated_unix_ms",
                )
                .bind(lineage)
                .bind(to_i64(version))
                .bind(i64::from(percent))
                .bind(by)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.channels(lineage).await
    }

    /// Records a rollback version and makes it stable (clearing any canary) in one transaction,
    /// refused while a round of the lineage is unfinished (its version would race this one).
    pub async fn publish_rollback(&self, row: &VersionRow, by: &str, now: i64) -> Result<()> {
        // A write transaction: reading the current channels and writing the new ones cannot be
        // split by another writer.
        let mut tx = self.begin_write().await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rounds WHERE lineage = $1 \
             AND state NOT IN ('published', 'failed', 'cancelled')",
        )
        .bind(&row.lineage)
        .fetch_one(&mut *tx)
        .await?;
        if active > 0 {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "a round of lineage {:?} is still running; cancel it or wait before rolling back",
                row.lineage
            )));
        }
        insert_version(&mut *tx, row).await?;
        sqlx::query(
            "UPDATE model_versions SET published_by = $1 WHERE lineage = $2 AND version = $3",
        )
        .bind(by)
        .bind(&row.lineage)
        .bind(to_i64(row.version))
        .execute(&mut *tx)
        .await?;
        advance_stable(&mut *tx, &row.lineage, row.version, by, now).await?;
        sqlx::query("DELETE FROM model_channels WHERE lineage = $1 AND channel = 'canary'")
            .bind(&row.lineage)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Who started the round of each version (`round_id` → `started_by`), and who published
    /// versions made outside rounds.
    pub async fn version_authors(&self, lineage: &str) -> Result<Vec<(u64, String, String)>> {
        let rows = sqlx::query(
            "SELECT v.version, COALESCE(r.started_by, '') AS started_by, v.published_by \
             FROM model_versions v LEFT JOIN rounds r ON r.round_id = v.round_id \
             WHERE v.lineage = $1",
        )
        .bind(lineage)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    to_u64(r.try_get("version")?),
                    r.try_get("started_by")?,
                    r.try_get("published_by")?,
                ))
            })
            .collect()
    }
}

pub(super) async fn advance_stable<'e, E>(
    executor: E,
    lineage: &str,
    version: u64,
    by: &str,
    now: i64,
) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO model_channels (lineage, channel, version, percent, updated_by, \
         updated_unix_ms) VALUES ($1, 'stable', $2, 100, $3, $4) \
         ON CONFLICT (lineage, channel) DO UPDATE SET version = excluded.version, \
         updated_by = excluded.updated_by, updated_unix_ms = excluded.updated_unix_ms \
         WHERE excluded.version >= model_channels.version",
    )
    .bind(lineage)
    .bind(to_i64(version))
    .bind(by)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(())
}
