//! The privacy ledger: each lineage's budget and one entry per admitted round, in the database.
//!
//! **Architecture Invariant:** a round is admitted only inside one write transaction
//! ([`Store::begin_write`]: SQLite's `BEGIN IMMEDIATE`, PostgreSQL's advisory lock) that reads
//! every charged entry of the lineage, checks the budget with the new round included, and inserts
//! the round and its reservation. Such transactions run one at a time on either database, so
//! concurrent round starts can never jointly overspend.
//!
//! Entry lifecycle: `reserved` when the round is admitted, `spent` as soon as its Poisson draw
//! is made (whatever happens next: a round that fails after drawing is charged, so rounds that
//! publish are not a selection among draws), `refunded` only when it ends before any draw.
//! Reserved and spent entries count against the budget.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::{CoordinatorError, Result};
use crate::privacy::DpEvent;
use crate::round::RoundRecord;
use crate::store::BindOptionalF64;
use crate::store::Store;

/// A lineage's privacy budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// `None`: no budget (the lineage is not private, e.g. test runs without noise).
    pub epsilon_max: Option<f64>,
    pub delta: f64,
}

impl Budget {
    /// Checks the values an operator configured.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut problems = Vec::new();
        if let Some(max) = self.epsilon_max
            && !(max.is_finite() && max > 0.0)
        {
            problems.push(format!(
                "epsilon_max must be finite and > 0 (omit it for no budget), got {max}"
            ));
        }
        if !(self.delta.is_finite() && self.delta > 0.0 && self.delta < 1.0) {
            problems.push(format!("delta must be in (0, 1), got {}", self.delta));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The state of a ledger entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerStatus {
    Reserved,
    Spent,
    Refunded,
}

impl LedgerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerStatus::Reserved => "reserved",
            LedgerStatus::Spent => "spent",
            LedgerStatus::Refunded => "refunded",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "reserved" => LedgerStatus::Reserved,
            "spent" => LedgerStatus::Spent,
            "refunded" => LedgerStatus::Refunded,
            _ => return None,
        })
    }

    /// Whether the entry counts against the budget.
    pub fn is_charged(self) -> bool {
        !matches!(self, LedgerStatus::Refunded)
    }
}

/// One admitted round.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerEntry {
    pub round_id: String,
    pub lineage: String,
    pub sampling_rate: f64,
    pub noise_multiplier: f64,
    pub status: LedgerStatus,
    /// The lineage's ε including this round when it was admitted; `None` when infinite.
    pub epsilon_after: Option<f64>,
    pub created_unix_ms: i64,
}

impl LedgerEntry {
    pub fn event(&self) -> DpEvent {
        DpEvent {
            sampling_rate: self.sampling_rate,
            noise_multiplier: self.noise_multiplier,
            rounds: 1,
        }
    }
}

/// Folds entries into events, one per distinct (q, z), so composition work grows with the number
/// of distinct settings rather than the number of rounds.
pub fn charged_events<'a>(entries: impl IntoIterator<Item = &'a LedgerEntry>) -> Vec<DpEvent> {
    let mut events: Vec<DpEvent> = Vec::new();
    for entry in entries.into_iter().filter(|e| e.status.is_charged()) {
        let event = entry.event();
        match events.iter_mut().find(|e| {
            e.sampling_rate.to_bits() == event.sampling_rate.to_bits()
                && e.noise_multiplier.to_bits() == event.noise_multiplier.to_bits()
        }) {
            Some(existing) => existing.rounds += 1,
            None => events.push(event),
        }
    }
    events
}

fn entry_from_row(row: &AnyRow) -> Result<LedgerEntry> {
    let status: String = row.try_get("status")?;
    let round_id: String = row.try_get("round_id")?;
    Ok(LedgerEntry {
        status: LedgerStatus::parse(&status).ok_or_else(|| {
            CoordinatorError::Internal(format!(
                "ledger entry {round_id} has unknown status {status}"
            ))
        })?,
        round_id,
        lineage: row.try_get("lineage")?,
        sampling_rate: row.try_get("sampling_rate")?,
        noise_multiplier: row.try_get("noise_multiplier")?,
        epsilon_after: row.try_get("epsilon_after")?,
        created_unix_ms: row.try_get("created_unix_ms")?,
    })
}

async fn ledger_rows<'e, E>(executor: E, lineage: &str) -> Result<Vec<LedgerEntry>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT * FROM privacy_ledger WHERE lineage = $1 ORDER BY created_unix_ms, round_id",
    )
    .bind(lineage)
    .fetch_all(executor)
    .await?;
    rows.iter().map(entry_from_row).collect()
}

impl Store {
    /// Sets (or replaces) a lineage's budget. ε_max may change at any time (every later round
    /// is checked against the new value); δ may not once rounds are charged, because every ε
    /// already recorded (ledger, manifests) holds at the old δ.
    pub async fn set_budget(&self, lineage: &str, budget: &Budget, now: i64) -> Result<()> {
        budget
            .validate()
            .map_err(CoordinatorError::InvalidArgument)?;
        let mut tx = self.begin_write().await?;
        let current: Option<f64> =
            sqlx::query_scalar("SELECT delta FROM privacy_budgets WHERE lineage = $1")
                .bind(lineage)
                .fetch_optional(&mut *tx)
                .await?;
        let charged: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM privacy_ledger WHERE lineage = $1 AND status != 'refunded'",
        )
        .bind(lineage)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(delta) = current
            && delta != budget.delta
            && charged > 0
        {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "lineage {lineage} already charged {charged} round(s) at δ = {delta:e}; its δ \
                 cannot change to {:e} (start a new lineage for a new δ)",
                budget.delta
            )));
        }
        sqlx::query(
            "INSERT INTO privacy_budgets (lineage, epsilon_max, delta, updated_unix_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (lineage) DO UPDATE SET \
             epsilon_max = excluded.epsilon_max, delta = excluded.delta, \
             updated_unix_ms = excluded.updated_unix_ms",
        )
        .bind(lineage)
        .bind_optional_f64(budget.epsilon_max)
        .bind(budget.delta)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn budget(&self, lineage: &str) -> Result<Option<Budget>> {
        let row = sqlx::query("SELECT epsilon_max, delta FROM privacy_budgets WHERE lineage = $1")
            .bind(lineage)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Budget {
                epsilon_max: row.try_get("epsilon_max")?,
                delta: row.try_get("delta")?,
            })
        })
        .transpose()
    }

    /// Every ledger entry of a lineage, oldest first.
    pub async fn ledger(&self, lineage: &str) -> Result<Vec<LedgerEntry>> {
        ledger_rows(&self.pool, lineage).await
    }

    /// Admits a round: in one write transaction, reads the lineage's entries, asks
    /// `admit` (given the charged history and this round's event) for the ε the lineage would
    /// reach (`Ok(None)` for infinite) or a refusal, refuses a second running round, and inserts
    /// the round with its reservation. `admit` runs on a blocking thread (it may take a while).
    ///
    /// `admit` returns `Ok(Err(refusal))` to refuse: the transaction is rolled back and the
    /// refusal handed back, so the caller can word it without holding the database.
    pub async fn admit_round<F, R>(
        &self,
        round: &RoundRecord,
        admit: F,
    ) -> Result<std::result::Result<LedgerEntry, R>>
    where
        F: FnOnce(Vec<DpEvent>, DpEvent) -> Result<std::result::Result<Option<f64>, R>>
            + Send
            + 'static,
        R: Send + 'static,
    {
        let mut tx = self.begin_write().await?;
        let entries = ledger_rows(&mut *tx, &round.lineage).await?;
        let entry = LedgerEntry {
            round_id: round.round_id.clone(),
            lineage: round.lineage.clone(),
            sampling_rate: round.sampling_rate,
            noise_multiplier: f64::from(round.spec.noise_multiplier),
            status: LedgerStatus::Reserved,
            epsilon_after: None,
            created_unix_ms: round.created_unix_ms,
        };
        let history = charged_events(&entries);
        let next = entry.event();
        let decision = tokio::task::spawn_blocking(move || admit(history, next))
            .await
            .map_err(|e| CoordinatorError::Internal(format!("accounting task failed: {e}")))??;
        let epsilon_after = match decision {
            Ok(epsilon_after) => epsilon_after,
            // Dropping the transaction rolls it back.
            Err(refusal) => return Ok(Err(refusal)),
        };
        let active: Option<String> = sqlx::query_scalar(
            "SELECT round_id FROM rounds WHERE lineage = $1 \
             AND state NOT IN ('published', 'failed', 'cancelled') LIMIT 1",
        )
        .bind(&round.lineage)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(active) = active {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "round {active} of lineage {} is still running; wait for it or cancel it",
                round.lineage
            )));
        }
        crate::store::insert_round(&mut *tx, round).await?;
        sqlx::query(
            "INSERT INTO privacy_ledger (round_id, lineage, sampling_rate, noise_multiplier, \
             status, epsilon_after, created_unix_ms, updated_unix_ms) \
             VALUES ($1, $2, $3, $4, 'reserved', $5, $6, $7)",
        )
        .bind(&entry.round_id)
        .bind(&entry.lineage)
        .bind(entry.sampling_rate)
        .bind(entry.noise_multiplier)
        .bind_optional_f64(epsilon_after)
        .bind(entry.created_unix_ms)
        .bind(entry.created_unix_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(LedgerEntry {
            epsilon_after,
            ..entry
        }))
    }
}

/// Marks a published round's entry spent (inside the publishing transaction).
pub(crate) async fn mark_spent(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    round_id: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE privacy_ledger SET status = 'spent', updated_unix_ms = $1 WHERE round_id = $2",
    )
    .bind(now)
    .bind(round_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Settles the entry of a round that failed or was cancelled: refunded only when no Poisson
/// draw was ever made for it (no sampled store, no update); once stores were drawn, the round
/// is charged whatever happened next, so published rounds are never a selection of draws
/// (inside the transition's transaction).
pub(crate) async fn settle_unpublished(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    round_id: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE privacy_ledger SET updated_unix_ms = $1, status = CASE \
         WHEN NOT EXISTS (SELECT 1 FROM round_updates WHERE round_id = $2) \
          AND NOT EXISTS (SELECT 1 FROM round_participants WHERE round_id = $3) THEN 'refunded' \
         ELSE 'spent' END WHERE round_id = $4 AND status = 'reserved'",
    )
    .bind(now)
    .bind(round_id)
    .bind(round_id)
    .bind(round_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod ledger_tests {
    use std::borrow::Cow;
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

    use super::*;

    fn round_row(round_id: &str, state: &str, z: f64) -> (String, String, String) {
        let spec = format!(r#"{{"noise_multiplier":{z},"target_clients":3}}"#);
        (round_id.to_owned(), state.to_owned(), spec)
    }

    #[tokio::test]
    async fn rounds_from_before_the_ledger_are_charged_conservatively_at_q_1() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        {
            let options = SqliteConnectOptions::from_str(&url)
                .unwrap_or_else(|e| panic!("{e}"))
                .create_if_missing(true);
            let pool = SqlitePool::connect_with(options)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            // The schema as it was before migration 0003.
            let mut before = sqlx::migrate!("./migrations/sqlite");
            before.migrations = Cow::Owned(before.migrations.iter().take(2).cloned().collect());
            before.run(&pool).await.unwrap_or_else(|e| panic!("{e}"));
            for (round_id, state, spec) in [
                round_row("published", "published", 0.5),
                round_row("failed-empty", "failed", 0.5),
                round_row("cancelled-with-update", "cancelled", 0.7),
                round_row("running", "training", 0.9),
            ] {
                sqlx::query(
                    "INSERT INTO rounds (round_id, lineage, state, spec, base_version, \
                     started_by, created_unix_ms, updated_unix_ms) VALUES ($1, 'l', $2, $3, 1, 'a', 1, 2)",
                )
                .bind(round_id)
                .bind(state)
                .bind(spec)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            }
            sqlx::query(
                "INSERT INTO round_updates (round_id, node_id, num_examples, norm, sha256, \
                 blob_path, received_unix_ms) VALUES ('cancelled-with-update', 'n', 1, 0.1, 'x', 'p', 1)",
            )
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            pool.close().await;
        }
        let store = Store::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
        let ledger = store.ledger("l").await.unwrap_or_else(|e| panic!("{e}"));
        let found: Vec<(&str, LedgerStatus, f64, f64)> = ledger
            .iter()
            .map(|e| {
                (
                    e.round_id.as_str(),
                    e.status,
                    e.sampling_rate,
                    e.noise_multiplier,
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("cancelled-with-update", LedgerStatus::Spent, 1.0, 0.7),
                ("published", LedgerStatus::Spent, 1.0, 0.5),
                ("running", LedgerStatus::Reserved, 1.0, 0.9),
            ]
        );
        let events = charged_events(&ledger);
        assert_eq!(events.iter().map(|e| e.rounds).sum::<u64>(), 3);
        // The round in flight keeps its denominator (its target), not 0.
        let expected: f64 =
            sqlx::query_scalar("SELECT expected_clients FROM rounds WHERE round_id = 'running'")
                .fetch_one(&store.pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(expected, 3.0);

        // With rounds charged, ε_max may change but δ may not.
        let budget = Budget {
            epsilon_max: Some(8.0),
            delta: 1e-5,
        };
        store
            .set_budget("l", &budget, 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let raised = Budget {
            epsilon_max: Some(12.0),
            ..budget
        };
        assert!(store.set_budget("l", &raised, 4).await.is_ok());
        let other_delta = Budget {
            delta: 1e-6,
            ..budget
        };
        let error = store
            .set_budget("l", &other_delta, 5)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("cannot change"), "{error}");
        assert_eq!(
            store.budget("l").await.unwrap_or_else(|e| panic!("{e}")),
            Some(raised)
        );
    }
}
