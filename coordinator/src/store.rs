//! Durable coordinator state through sqlx: SQLite (embedded, the default) or PostgreSQL,
//! selected by the database URL.
//!
//! Every state transition and every accepted update is committed here before it is acknowledged.
//! One implementation serves both databases (sqlx's `Any` driver): every statement is written in
//! the SQL both accept (`$n` placeholders, `ON CONFLICT`, 64-bit integers, doubles, text, blobs;
//! booleans stored as 0/1), and each database has its own numbered migrations
//! (`migrations/sqlite`, `migrations/postgres`) that must stay in step. The conformance suite
//! (`store_conformance.rs`) runs every test against both.

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::error::{CoordinatorError, Result};
use crate::presence::Pending;
use crate::round::{RoundRecord, RoundSpec, RoundState};

mod channels;
mod frame_requests;
mod leases;
mod metrics;
mod quarantine;

pub use channels::{ChannelRow, Channels};

pub use frame_requests::{FrameRequestEventRow, FrameRequestRow};
pub use metrics::{MetricValueRow, ReleaseRow};
pub use quarantine::QuarantineRow;

/// A published model version as stored.
#[derive(Clone, Debug)]
pub struct VersionRow {
    pub lineage: String,
    pub version: u64,
    pub parent_version: u64,
    pub round_id: String,
    pub weights_sha256: String,
    pub weights_path: String,
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub created_unix_ms: i64,
}

/// An accepted client update.
#[derive(Clone, Debug)]
pub struct UpdateRow {
    pub round_id: String,
    pub node_id: String,
    pub num_examples: u64,
    /// The node's report that its delta was within the clip norm before clipping.
    pub within_clip: bool,
    pub norm: f64,
    pub sha256: String,
    pub blob_path: String,
    pub received_unix_ms: i64,
}

#[derive(Clone, Debug)]
pub struct NodeRow {
    pub node_id: String,
    pub last_seen_unix_ms: i64,
    pub lineage: String,
    pub installed_version: u64,
    pub backend: String,
}

/// Which database a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names, or an error that says which URLs are understood.
    pub fn of_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(CoordinatorError::InvalidArgument(format!(
                "database URL {:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE",
                redact_url(url)
            )))
        }
    }
}

/// A URL with its password (if any) replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Binding an optional double through the `Any` driver.
pub(crate) trait BindOptionalF64 {
    fn bind_optional_f64(self, value: Option<f64>) -> Self;
}

impl<'q> BindOptionalF64 for sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    /// sqlx 0.8.6's `Any` driver sends a NULL `f64` to PostgreSQL typed as `real` (and a NULL
    /// `f32` as `double precision`), which makes PostgreSQL refuse the statement's next non-NULL
    /// double ("incorrect binary data format"). So a missing value is bound as a NULL `f32`,
    /// which arrives as the `double precision` NULL it is. SQLite sees a plain NULL either way.
    /// The conformance suite covers both halves (budgets without ε_max, suppressed metrics).
    fn bind_optional_f64(self, value: Option<f64>) -> Self {
        match value {
            Some(value) => self.bind(value),
            None => self.bind(None::<f32>),
        }
    }
}

/// Key of the PostgreSQL advisory lock that write transactions take (see [`Store::begin_write`]).
const POSTGRES_WRITE_LOCK: i64 = 0x6261_636b_726f_6f6d; // "backroom"

/// A training round as the long polls see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollRound {
    pub round_id: String,
    pub created_unix_ms: i64,
    pub training_deadline_unix_ms: i64,
    pub sampled: std::collections::HashSet<String>,
    /// Nodes whose update for the round is recorded.
    pub uploaded: std::collections::HashSet<String>,
}

/// See [`Store::round_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundProgress {
    pub state: RoundState,
    pub sampled: u32,
    pub accepted: u32,
    pub refused: u32,
    pub training_deadline_unix_ms: i64,
}

#[derive(Clone, Debug)]
pub struct Store {
    /// Reads (and, on PostgreSQL, writes).
    pub(crate) pool: AnyPool,
    /// Every write. On SQLite a pool of one connection: writers queue for it in this process
    /// (first come, first served) instead of contending for the database's write lock, where
    /// SQLite's busy handler makes the losers sleep and retry (measured: 1,000 concurrent
    /// updates took 10 s that way). On PostgreSQL the same pool as reads.
    pub(crate) writer: AnyPool,
    backend: Backend,
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl Store {
    /// Opens the database at `url` (`sqlite://PATH`, created if missing, or `postgres://…`) and
    /// runs its numbered migrations.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let (pool, writer) = match backend {
            Backend::Sqlite => {
                // Create the file if missing unless the URL says otherwise.
                let url = if url.contains("mode=") {
                    url.to_owned()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                let options = AnyConnectOptions::from_str(&url)?;
                let sqlite_pool = |connections: u32| {
                    AnyPoolOptions::new()
                        .max_connections(connections)
                        .acquire_timeout(std::time::Duration::from_secs(60))
                        .after_connect(|conn, _meta| {
                            Box::pin(async move {
                                // WAL so readers never block the writer; FULL so a commit
                                // survives power loss; writers of other processes wait for
                                // each other instead of failing.
                                for pragma in [
                                    "PRAGMA journal_mode = WAL",
                                    "PRAGMA synchronous = FULL",
                                    "PRAGMA foreign_keys = ON",
                                    "PRAGMA busy_timeout = 10000",
                                ] {
                                    conn.execute(pragma).await?;
                                }
                                Ok(())
                            })
                        })
                };
                let writer = sqlite_pool(1).connect_with(options.clone()).await?;
                let pool = sqlite_pool(4).connect_with(options).await?;
                (pool, writer)
            }
            Backend::Postgres => {
                let options = AnyConnectOptions::from_str(url)?;
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(std::time::Duration::from_secs(30))
                    .connect_with(options)
                    .await?;
                (pool.clone(), pool)
            }
        };
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&writer).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&writer).await?,
        }
        Ok(Self {
            pool,
            writer,
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that reads and then writes, serialised with every other such
    /// transaction: SQLite's `BEGIN IMMEDIATE` (the database's write lock from the start), and on
    /// PostgreSQL a transaction-scoped advisory lock taken first. Every multi-statement write
    /// goes through here, so what one reads cannot change before it commits, on either database.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.writer.begin().await?;
                // The function returns `void`, which the Any driver cannot decode: select a
                // constant from it instead.
                sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                    .bind(POSTGRES_WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    // ---- model versions ----

    pub async fn insert_version(&self, row: &VersionRow) -> Result<()> {
        insert_version(&self.writer, row).await
    }

    pub async fn latest_version(&self, lineage: &str) -> Result<Option<VersionRow>> {
        let row = sqlx::query(
            "SELECT * FROM model_versions WHERE lineage = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(lineage)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| version_from_row(&r)))
    }

    pub async fn version(&self, lineage: &str, version: u64) -> Result<Option<VersionRow>> {
        let row = sqlx::query("SELECT * FROM model_versions WHERE lineage = $1 AND version = $2")
            .bind(lineage)
            .bind(to_i64(version))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| version_from_row(&r)))
    }

    pub async fn list_versions(&self, lineage: &str) -> Result<Vec<VersionRow>> {
        let rows = sqlx::query(
            "SELECT * FROM model_versions WHERE ($1 = '' OR lineage = $2) ORDER BY lineage, version",
        )
        .bind(lineage)
        .bind(lineage)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(version_from_row).collect())
    }

    // ---- rounds ----

    pub async fn round(&self, round_id: &str) -> Result<Option<RoundRecord>> {
        let row = sqlx::query("SELECT * FROM rounds WHERE round_id = $1")
            .bind(round_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.complete_round(&row).await?)),
            None => Ok(None),
        }
    }

    /// A round's state and counts in one row: what round drivers and watchers follow while a
    /// round of thousands of stores trains, without reading its participants.
    pub async fn round_progress(&self, round_id: &str) -> Result<Option<RoundProgress>> {
        let row = sqlx::query(
            "SELECT state, updates_refused, training_deadline_unix_ms, \
             (SELECT COUNT(*) FROM round_participants WHERE round_id = $1) AS sampled, \
             (SELECT COUNT(*) FROM round_updates WHERE round_id = $2) AS accepted \
             FROM rounds WHERE round_id = $3",
        )
        .bind(round_id)
        .bind(round_id)
        .bind(round_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let state_text: String = row.try_get("state")?;
        let state = RoundState::parse(&state_text).ok_or_else(|| {
            CoordinatorError::Internal(format!("round {round_id} has unknown state {state_text}"))
        })?;
        let count = |name: &str| -> Result<u32> {
            Ok(u32::try_from(row.try_get::<i64, _>(name)?).unwrap_or(u32::MAX))
        };
        Ok(Some(RoundProgress {
            state,
            sampled: count("sampled")?,
            accepted: count("accepted")?,
            refused: count("updates_refused")?,
            training_deadline_unix_ms: row.try_get("training_deadline_unix_ms")?,
        }))
    }

    pub async fn list_rounds(&self, lineage: &str) -> Result<Vec<RoundRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM rounds WHERE ($1 = '' OR lineage = $2) ORDER BY created_unix_ms, round_id",
        )
        .bind(lineage)
        .bind(lineage)
        .fetch_all(&self.pool)
        .await?;
        let mut rounds = Vec::with_capacity(rows.len());
        for row in &rows {
            rounds.push(self.complete_round(row).await?);
        }
        Ok(rounds)
    }

    /// Rounds not yet in a final state (to resume after a restart).
    pub async fn unfinished_rounds(&self) -> Result<Vec<RoundRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM rounds WHERE state NOT IN ('published', 'failed', 'cancelled') \
             ORDER BY created_unix_ms",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut rounds = Vec::with_capacity(rows.len());
        for row in &rows {
            rounds.push(self.complete_round(row).await?);
        }
        Ok(rounds)
    }

    async fn complete_round(&self, row: &AnyRow) -> Result<RoundRecord> {
        let round_id: String = row.try_get("round_id")?;
        let state_text: String = row.try_get("state")?;
        let state = RoundState::parse(&state_text).ok_or_else(|| {
            CoordinatorError::Internal(format!("round {round_id} has unknown state {state_text}"))
        })?;
        let spec_text: String = row.try_get("spec")?;
        let spec: RoundSpec = serde_json::from_str(&spec_text).map_err(|e| {
            CoordinatorError::Internal(format!("round {round_id} has an unreadable spec: {e}"))
        })?;
        // The participants as one comma-joined value (node names have no commas): a round of
        // thousands of stores is read in one row, not thousands.
        let participants = match self.backend {
            Backend::Sqlite => {
                "SELECT group_concat(node_id, ',') FROM \
                 (SELECT node_id FROM round_participants WHERE round_id = $1 ORDER BY node_id)"
            }
            Backend::Postgres => {
                "SELECT string_agg(node_id, ',' ORDER BY node_id) FROM round_participants \
                 WHERE round_id = $1"
            }
        };
        let joined: Option<String> = sqlx::query_scalar(participants)
            .bind(&round_id)
            .fetch_one(&self.pool)
            .await?;
        let mut sampled_nodes: Vec<String> = joined
            .as_deref()
            .filter(|j| !j.is_empty())
            .map(|j| j.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        // In byte order whatever the database's collation (uploads look nodes up by bisection).
        sampled_nodes.sort_unstable();
        let extras = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM round_updates WHERE round_id = $1) AS accepted, \
             (SELECT epsilon_after FROM privacy_ledger WHERE round_id = $2 LIMIT 1) AS epsilon_after, \
             (SELECT clip_norm FROM adaptive_clip_norms WHERE round_id = $3 LIMIT 1) AS next_clip_norm",
        )
        .bind(&round_id)
        .bind(&round_id)
        .bind(&round_id)
        .fetch_one(&self.pool)
        .await?;
        let accepted: i64 = extras.try_get("accepted")?;
        let epsilon_after: Option<f64> = extras.try_get("epsilon_after")?;
        let next_clip_norm: Option<f64> = extras.try_get("next_clip_norm")?;
        Ok(RoundRecord {
            next_clip_norm: next_clip_norm.map(|c| c as f32),
            epsilon_after,
            lineage: row.try_get("lineage")?,
            state,
            spec,
            base_version: to_u64(row.try_get("base_version")?),
            published_version: to_u64(row.try_get("published_version")?),
            failure_reason: row.try_get("failure_reason")?,
            started_by: row.try_get("started_by")?,
            training_deadline_unix_ms: row.try_get("training_deadline_unix_ms")?,
            updates_refused: u32::try_from(row.try_get::<i64, _>("updates_refused")?)
                .unwrap_or(u32::MAX),
            created_unix_ms: row.try_get("created_unix_ms")?,
            updated_unix_ms: row.try_get("updated_unix_ms")?,
            sampled_nodes,
            updates_accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
            sampling_rate: row.try_get("sampling_rate")?,
            expected_clients: row.try_get("expected_clients")?,
            round_id,
        })
    }

    /// Moves a round from `from` to `to` if it is still in `from`. Returns whether it moved.
    pub async fn transition(
        &self,
        round_id: &str,
        from: RoundState,
        to: RoundState,
        failure_reason: &str,
        now_unix_ms: i64,
    ) -> Result<bool> {
        if !from.can_move_to(to) {
            return Err(CoordinatorError::Internal(format!(
                "illegal round transition {} -> {}",
                from.as_str(),
                to.as_str()
            )));
        }
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE rounds SET state = $1, failure_reason = $2, updated_unix_ms = $3 \
             WHERE round_id = $4 AND state = $5",
        )
        .bind(to.as_str())
        .bind(failure_reason)
        .bind(now_unix_ms)
        .bind(round_id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
        let moved = result.rows_affected() == 1;
        if moved && matches!(to, RoundState::Failed | RoundState::Cancelled) {
            crate::ledger::settle_unpublished(&mut tx, round_id, now_unix_ms).await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// Records the sampled nodes and the training deadline and moves `sampling → training`, in
    /// one transaction.
    /// `expected_clients` is q × the population the draw was made from: the fixed denominator.
    pub async fn start_training(
        &self,
        round_id: &str,
        nodes: &[String],
        expected_clients: f64,
        deadline_unix_ms: i64,
        now_unix_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE rounds SET state = 'training', training_deadline_unix_ms = $1, \
             expected_clients = $2, updated_unix_ms = $3 WHERE round_id = $4 AND state = 'sampling'",
        )
        .bind(deadline_unix_ms)
        .bind(expected_clients)
        .bind(now_unix_ms)
        .bind(round_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !moved {
            return Ok(false);
        }
        for node in nodes {
            sqlx::query("INSERT INTO round_participants (round_id, node_id) VALUES ($1, $2)")
                .bind(round_id)
                .bind(node)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Inserts the new version and moves the round `aggregating → published` atomically, so a
    /// version is never published twice for one round.
    pub async fn publish(
        &self,
        round_id: &str,
        version: &VersionRow,
        next_clip_norm: Option<f64>,
        to_stable: bool,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE rounds SET state = 'published', published_version = $1, updated_unix_ms = $2 \
             WHERE round_id = $3 AND state = 'aggregating'",
        )
        .bind(to_i64(version.version))
        .bind(now)
        .bind(round_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !moved {
            return Ok(false);
        }
        insert_version(&mut *tx, version).await?;
        if to_stable {
            channels::advance_stable(
                &mut *tx,
                &version.lineage,
                version.version,
                &format!("round {round_id}"),
                now,
            )
            .await?;
        }
        crate::ledger::mark_spent(&mut tx, round_id, now).await?;
        if let Some(clip_norm) = next_clip_norm {
            sqlx::query(
                "INSERT INTO adaptive_clip_norms (lineage, clip_norm, round_id, updated_unix_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (lineage) DO UPDATE SET \
                 clip_norm = excluded.clip_norm, round_id = excluded.round_id, \
                 updated_unix_ms = excluded.updated_unix_ms",
            )
            .bind(&version.lineage)
            .bind(clip_norm)
            .bind(round_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Charges a round's ledger entry now (a Poisson draw was made, whatever happens next).
    pub async fn charge_round(&self, round_id: &str, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        crate::ledger::mark_spent(&mut tx, round_id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The clip norm the lineage's next adaptive round uses, if an adaptive round published.
    pub async fn adaptive_clip_norm(&self, lineage: &str) -> Result<Option<f64>> {
        Ok(
            sqlx::query_scalar("SELECT clip_norm FROM adaptive_clip_norms WHERE lineage = $1")
                .bind(lineage)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn count_refused(&self, round_id: &str) -> Result<()> {
        sqlx::query("UPDATE rounds SET updates_refused = updates_refused + 1 WHERE round_id = $1")
            .bind(round_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Training rounds in which `node_id` is sampled and has not yet uploaded.
    pub async fn pending_tasks_for(&self, node_id: &str, now: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT r.round_id FROM rounds r JOIN round_participants p ON p.round_id = r.round_id \
             WHERE r.state = 'training' AND p.node_id = $1 AND r.training_deadline_unix_ms > $2 \
             AND NOT EXISTS (SELECT 1 FROM round_updates u WHERE u.round_id = r.round_id \
             AND u.node_id = p.node_id) ORDER BY r.created_unix_ms",
        )
        .bind(node_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every training round with its participants and the nodes that have uploaded in it, for
    /// the long polls' shared view ([`crate::poll_view`]); each list is read as one comma-joined
    /// value, so a round of thousands of stores is one row.
    pub async fn training_rounds_for_polls(&self) -> Result<Vec<PollRound>> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT r.round_id, r.created_unix_ms, r.training_deadline_unix_ms, \
                 (SELECT group_concat(node_id, ',') FROM round_participants p \
                  WHERE p.round_id = r.round_id) AS sampled, \
                 (SELECT group_concat(node_id, ',') FROM round_updates u \
                  WHERE u.round_id = r.round_id) AS uploaded \
                 FROM rounds r WHERE r.state = 'training' ORDER BY r.created_unix_ms"
            }
            Backend::Postgres => {
                "SELECT r.round_id, r.created_unix_ms, r.training_deadline_unix_ms, \
                 (SELECT string_agg(node_id, ',') FROM round_participants p \
                  WHERE p.round_id = r.round_id) AS sampled, \
                 (SELECT string_agg(node_id, ',') FROM round_updates u \
                  WHERE u.round_id = r.round_id) AS uploaded \
                 FROM rounds r WHERE r.state = 'training' ORDER BY r.created_unix_ms"
            }
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        let split = |joined: Option<String>| -> std::collections::HashSet<String> {
            joined
                .as_deref()
                .filter(|j| !j.is_empty())
                .map(|j| j.split(',').map(str::to_owned).collect())
                .unwrap_or_default()
        };
        rows.iter()
            .map(|row| {
                Ok(PollRound {
                    round_id: row.try_get("round_id")?,
                    created_unix_ms: row.try_get("created_unix_ms")?,
                    training_deadline_unix_ms: row.try_get("training_deadline_unix_ms")?,
                    sampled: split(row.try_get("sampled")?),
                    uploaded: split(row.try_get("uploaded")?),
                })
            })
            .collect()
    }

    // ---- updates ----

    /// Records an accepted update, in one statement, only while its round is still training and
    /// before the deadline. Returns false if nothing was recorded (the node already has an update
    /// in this round, or the round stopped accepting updates meanwhile).
    ///
    /// In a write transaction, so it is serialised with the round's move to `aggregating`: an
    /// update this returns true for is always among those the aggregation then reads.
    pub async fn insert_update(&self, row: &UpdateRow) -> Result<bool> {
        let inserted = self.insert_updates(std::slice::from_ref(row)).await?;
        Ok(inserted.first().copied().unwrap_or(false))
    }

    /// [`Store::insert_update`] for several updates in one write transaction (group commit:
    /// one durable commit for the updates that arrived together). Returns, per row, whether it
    /// was recorded; all or none are durable when this returns.
    pub async fn insert_updates(&self, rows: &[UpdateRow]) -> Result<Vec<bool>> {
        let mut tx = self.begin_write().await?;
        let mut inserted = Vec::with_capacity(rows.len());
        for row in rows {
            let result = sqlx::query(
                "INSERT INTO round_updates (round_id, node_id, num_examples, norm, sha256, \
                 blob_path, received_unix_ms, within_clip) SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
                 WHERE EXISTS (SELECT 1 FROM \
                 rounds WHERE round_id = $9 AND state = 'training' AND training_deadline_unix_ms > $10) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&row.round_id)
            .bind(&row.node_id)
            .bind(to_i64(row.num_examples))
            .bind(row.norm)
            .bind(&row.sha256)
            .bind(&row.blob_path)
            .bind(row.received_unix_ms)
            .bind(i64::from(row.within_clip))
            .bind(&row.round_id)
            .bind(row.received_unix_ms)
            .execute(&mut *tx)
            .await?;
            inserted.push(result.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(inserted)
    }

    pub async fn has_update(&self, round_id: &str, node_id: &str) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM round_updates WHERE round_id = $1 AND node_id = $2")
                .bind(round_id)
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    pub async fn updates(&self, round_id: &str) -> Result<Vec<UpdateRow>> {
        let rows = sqlx::query("SELECT * FROM round_updates WHERE round_id = $1 ORDER BY node_id")
            .bind(round_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UpdateRow {
                    round_id: r.try_get("round_id")?,
                    node_id: r.try_get("node_id")?,
                    num_examples: to_u64(r.try_get("num_examples")?),
                    within_clip: r.try_get::<i64, _>("within_clip")? != 0,
                    norm: r.try_get("norm")?,
                    sha256: r.try_get("sha256")?,
                    blob_path: r.try_get("blob_path")?,
                    received_unix_ms: r.try_get("received_unix_ms")?,
                })
            })
            .collect()
    }

    // ---- nodes ----

    /// Writes a batch of node presence reports in one transaction: each node's last-seen time,
    /// and the lineage, installed version and backend where reported.
    pub async fn record_presence(&self, batch: &[(String, Pending)]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (node_id, pending) in batch {
            let seen = pending.seen_unix_ms;
            let reported = &pending.reported;
            match (&reported.lineage, reported.installed_version) {
                (Some(lineage), Some(version)) => {
                    sqlx::query(
                        "INSERT INTO nodes (node_id, first_seen_unix_ms, last_seen_unix_ms, \
                         lineage, installed_version, backend) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (node_id) DO UPDATE SET \
                         last_seen_unix_ms = excluded.last_seen_unix_ms, \
                         lineage = excluded.lineage, installed_version = excluded.installed_version, \
                         backend = COALESCE($7, nodes.backend)",
                    )
                    .bind(node_id)
                    .bind(seen)
                    .bind(seen)
                    .bind(lineage)
                    .bind(to_i64(version))
                    .bind(reported.backend.clone().unwrap_or_default())
                    .bind(reported.backend.clone())
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {
                    sqlx::query(
                        "INSERT INTO nodes (node_id, first_seen_unix_ms, last_seen_unix_ms) \
                         VALUES ($1, $2, $3) ON CONFLICT (node_id) DO UPDATE SET \
                         last_seen_unix_ms = excluded.last_seen_unix_ms",
                    )
                    .bind(node_id)
                    .bind(seen)
                    .bind(seen)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// (lineage, state, rounds) for every lineage and state present (telemetry).
    pub async fn round_state_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT lineage, state, COUNT(*) AS n FROM rounds GROUP BY lineage, state ORDER BY lineage, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("lineage")?, r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY node_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRow {
                    node_id: r.try_get("node_id")?,
                    last_seen_unix_ms: r.try_get("last_seen_unix_ms")?,
                    lineage: r.try_get("lineage")?,
                    installed_version: to_u64(r.try_get("installed_version")?),
                    backend: r.try_get("backend")?,
                })
            })
            .collect()
    }

    /// Nodes of `lineage` seen at or after `since_unix_ms`.
    pub async fn online_nodes(&self, lineage: &str, since_unix_ms: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT node_id FROM nodes WHERE last_seen_unix_ms >= $1 AND lineage = $2 \
             ORDER BY node_id",
        )
        .bind(since_unix_ms)
        .bind(lineage)
        .fetch_all(&self.pool)
        .await?)
    }
}

async fn insert_version<'e, E>(executor: E, row: &VersionRow) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO model_versions (lineage, version, parent_version, round_id, weights_sha256, \
         weights_path, manifest, signature, created_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&row.lineage)
    .bind(to_i64(row.version))
    .bind(to_i64(row.parent_version))
    .bind(&row.round_id)
    .bind(&row.weights_sha256)
    .bind(&row.weights_path)
    .bind(&row.manifest)
    .bind(&row.signature)
    .bind(row.created_unix_ms)
    .execute(executor)
    .await?;
    Ok(())
}

fn version_from_row(r: &AnyRow) -> VersionRow {
    VersionRow {
        lineage: r.try_get("lineage").unwrap_or_default(),
        version: to_u64(r.try_get("version").unwrap_or_default()),
        parent_version: to_u64(r.try_get("parent_version").unwrap_or_default()),
        round_id: r.try_get("round_id").unwrap_or_default(),
        weights_sha256: r.try_get("weights_sha256").unwrap_or_default(),
        weights_path: r.try_get("weights_path").unwrap_or_default(),
        manifest: r.try_get("manifest").unwrap_or_default(),
        signature: r.try_get("signature").unwrap_or_default(),
        created_unix_ms: r.try_get("created_unix_ms").unwrap_or_default(),
    }
}

/// Inserts a round (in `pending`); a second unfinished round of the same lineage is refused by
/// the `rounds_one_active_per_lineage` index.
pub(crate) async fn insert_round<'e, E>(executor: E, round: &RoundRecord) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let spec = serde_json::to_string(&round.spec)
        .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO rounds (round_id, lineage, state, spec, base_version, started_by, \
         created_unix_ms, updated_unix_ms, sampling_rate, expected_clients) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&round.round_id)
    .bind(&round.lineage)
    .bind(round.state.as_str())
    .bind(spec)
    .bind(to_i64(round.base_version))
    .bind(&round.started_by)
    .bind(round.created_unix_ms)
    .bind(round.updated_unix_ms)
    .bind(round.sampling_rate)
    .bind(round.expected_clients)
    .execute(executor)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            CoordinatorError::FailedPrecondition(format!(
                "lineage {} already has a running round; wait for it or cancel it",
                round.lineage
            ))
        }
        other => other.into(),
    })?;
    Ok(())
}
