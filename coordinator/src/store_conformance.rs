//! Conformance suite of the storage layer: every test below runs against embedded SQLite (a
//! temporary file) and against PostgreSQL (`DATABASE_URL`, each test in a schema of its own,
//! dropped afterwards), through the same [`Store`] API the coordinator uses.
//!
//! Without `DATABASE_URL` the PostgreSQL half says it skipped; with
//! `BACKROOM_REQUIRE_POSTGRES=1` (CI) it fails instead, so CI cannot pass without it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::audit::conformance::{
    audit_log_appends_a_chain_that_verifies_and_refuses_updates, audit_log_checks_its_head_file,
    audit_log_reports_an_edited_entry, audit_log_reports_deleted_entries,
    audit_log_reports_reordered_and_renumbered_entries,
};
use crate::error::CoordinatorError;
use crate::ledger::{Budget, LedgerStatus};
use crate::round::{NoiseMode, RoundRecord, RoundSpec, RoundState, Strategy};
use crate::store::{
    Backend, FrameRequestRow, MetricValueRow, QuarantineRow, ReleaseRow, Store, UpdateRow,
    VersionRow,
};

/// A store on a scratch database, and what to clean up afterwards.
struct Scratch {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: (server URL, schema) to drop.
    schema: Option<(String, String)>,
}

impl Scratch {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("sqlite://{}", dir.path().join("conformance.db").display());
        let store = Store::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.backend(), Backend::Sqlite);
        Self {
            store,
            _dir: Some(dir),
            schema: None,
        }
    }

    /// `None` (after saying so) when no PostgreSQL server is configured.
    async fn postgres(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            assert!(
                std::env::var_os("BACKROOM_REQUIRE_POSTGRES").is_none(),
                "BACKROOM_REQUIRE_POSTGRES is set but DATABASE_URL is not"
            );
            eprintln!("skipped: {test} on PostgreSQL (set DATABASE_URL=postgres://…)");
            return None;
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let schema = format!(
            "conformance_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        on_server(&url, &format!("CREATE SCHEMA {schema}")).await;
        let separator = if url.contains('?') { '&' } else { '?' };
        let scoped = format!("{url}{separator}options=-c%20search_path%3D{schema}");
        let store = Store::open(&scoped).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.backend(), Backend::Postgres);
        Some(Self {
            store,
            _dir: None,
            schema: Some((url, schema)),
        })
    }

    async fn finish(self) {
        self.store.pool.close().await;
        self.store.writer.close().await;
        if let Some((url, schema)) = self.schema {
            on_server(&url, &format!("DROP SCHEMA {schema} CASCADE")).await;
        }
    }
}

/// Runs one statement on the PostgreSQL server itself (outside any test's schema).
async fn on_server(url: &str, statement: &str) {
    let admin = sqlx::postgres::PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at DATABASE_URL: {e}"));
    sqlx::query(statement)
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    admin.close().await;
}

/// Runs each named test (an `async fn(&Store)`) once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let scratch = super::Scratch::sqlite().await;
                    super::$name(&scratch.store).await;
                    scratch.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(scratch) = super::Scratch::postgres(stringify!($name)).await else {
                        return;
                    };
                    super::$name(&scratch.store).await;
                    scratch.finish().await;
                }
            )*
        }
    };
}

conformance!(
    versions_round_trip_and_are_never_written_twice,
    a_round_moves_only_along_legal_transitions,
    updates_are_recorded_once_and_only_while_training,
    updates_committed_in_a_group_are_each_judged_alone,
    publishing_is_atomic_and_happens_once,
    a_round_ended_before_its_draw_is_refunded_and_after_it_is_spent,
    delta_is_frozen_once_rounds_are_charged,
    concurrent_admissions_admit_one_round_and_never_overspend,
    an_acknowledged_update_is_always_among_those_aggregated,
    nodes_are_upserted_and_found_online,
    channels_promote_canaries_and_never_move_stable_back,
    metric_releases_are_idempotent_and_filtered_by_window,
    frame_requests_follow_their_states_with_a_trail,
    quarantined_updates_are_kept_apart_from_accepted_ones,
    a_round_lease_has_one_holder_until_it_expires,
    audit_log_appends_a_chain_that_verifies_and_refuses_updates,
    audit_log_reports_an_edited_entry,
    audit_log_reports_deleted_entries,
    audit_log_reports_reordered_and_renumbered_entries,
    audit_log_checks_its_head_file,
);

fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn spec(noise_multiplier: f32) -> RoundSpec {
    RoundSpec {
        strategy: Strategy::FedAvg,
        target_clients: 3,
        min_clients: 1,
        deadline_secs: 60,
        local_steps: 1,
        batch_size: 8,
        learning_rate: 0.05,
        clip_norm: 1.0,
        noise_multiplier,
        noise_mode: NoiseMode::default(),
        adaptive_clipping: None,
        server_learning_rate: None,
        trim_fraction: None,
        proximal_mu: 0.0,
    }
}

fn round(round_id: &str, lineage: &str, created: i64) -> RoundRecord {
    RoundRecord {
        round_id: round_id.to_owned(),
        lineage: lineage.to_owned(),
        state: RoundState::Pending,
        spec: spec(0.8),
        base_version: 1,
        published_version: 0,
        failure_reason: String::new(),
        started_by: "ml-engineer".to_owned(),
        training_deadline_unix_ms: 0,
        updates_refused: 0,
        created_unix_ms: created,
        updated_unix_ms: created,
        sampled_nodes: Vec::new(),
        updates_accepted: 0,
        sampling_rate: 0.5,
        expected_clients: 2.0,
        epsilon_after: None,
        next_clip_norm: None,
    }
}

fn version(lineage: &str, version: u64, round_id: &str) -> VersionRow {
    VersionRow {
        lineage: lineage.to_owned(),
        version,
        parent_version: version.saturating_sub(1),
        round_id: round_id.to_owned(),
        weights_sha256: format!("{version:064x}"),
        weights_path: format!("models/{lineage}/v{version}.safetensors"),
        manifest: vec![0, 1, 2, 255, version as u8],
        signature: vec![7; 64],
        created_unix_ms: 1_000 + version as i64,
    }
}

pub(crate) fn update(round_id: &str, node_id: &str, at: i64) -> UpdateRow {
    UpdateRow {
        round_id: round_id.to_owned(),
        node_id: node_id.to_owned(),
        num_examples: 40,
        within_clip: node_id.ends_with('0'),
        norm: 0.75,
        sha256: format!("sha-{node_id}"),
        blob_path: format!("updates/{round_id}/{node_id}.bin"),
        received_unix_ms: at,
    }
}

/// Admits a round with no budget check (the ε it reports is 1.5).
async fn admit(store: &Store, record: &RoundRecord) {
    let admitted = ok(store
        .admit_round(record, |_history, _next| Ok(Ok::<_, ()>(Some(1.5))))
        .await);
    assert!(admitted.is_ok());
}

/// Admits a round and brings it to `training` with `nodes` sampled, deadline at 10 000.
pub(crate) async fn training_round(store: &Store, round_id: &str, lineage: &str, nodes: &[&str]) {
    admit(store, &round(round_id, lineage, 10)).await;
    assert!(ok(store
        .transition(round_id, RoundState::Pending, RoundState::Sampling, "", 11)
        .await));
    let nodes: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
    assert!(ok(store
        .start_training(round_id, &nodes, 2.0, 10_000, 12)
        .await));
}

async fn versions_round_trip_and_are_never_written_twice(store: &Store) {
    assert!(ok(store.latest_version("shelf").await).is_none());
    for v in 1..=3 {
        ok(store
            .insert_version(&version("shelf", v, &format!("r{v}")))
            .await);
    }
    ok(store.insert_version(&version("other", 1, "o1")).await);
    let latest = ok(store.latest_version("shelf").await).unwrap_or_else(|| panic!("no latest"));
    assert_eq!(latest.version, 3);
    assert_eq!(latest.parent_version, 2);
    assert_eq!(latest.manifest, vec![0, 1, 2, 255, 3]);
    assert_eq!(latest.signature, vec![7; 64]);
    assert_eq!(latest.weights_sha256, format!("{:064x}", 3));
    assert_eq!(latest.created_unix_ms, 1_003);
    let second = ok(store.version("shelf", 2).await).unwrap_or_else(|| panic!("no v2"));
    assert_eq!(second.round_id, "r2");
    assert!(ok(store.version("shelf", 9).await).is_none());
    let all: Vec<(String, u64)> = ok(store.list_versions("").await)
        .into_iter()
        .map(|v| (v.lineage, v.version))
        .collect();
    assert_eq!(
        all,
        [("other", 1), ("shelf", 1), ("shelf", 2), ("shelf", 3)]
            .map(|(l, v)| (l.to_owned(), v))
            .to_vec()
    );
    assert_eq!(ok(store.list_versions("shelf").await).len(), 3);
    // The same version twice is refused by the database, and the first one is kept.
    let mut again = version("shelf", 3, "intruder");
    again.weights_sha256 = "0".repeat(64);
    assert!(store.insert_version(&again).await.is_err());
    let kept = ok(store.version("shelf", 3).await).unwrap_or_else(|| panic!("no v3"));
    assert_eq!(kept.round_id, "r3");
}

async fn a_round_moves_only_along_legal_transitions(store: &Store) {
    let record = round("r1", "shelf", 10);
    admit(store, &record).await;
    let stored = ok(store.round("r1").await).unwrap_or_else(|| panic!("no round"));
    assert_eq!(stored.state, RoundState::Pending);
    assert_eq!(stored.spec, record.spec);
    assert_eq!(stored.sampling_rate, 0.5);
    assert_eq!(stored.expected_clients, 2.0);
    assert_eq!(stored.epsilon_after, Some(1.5));
    assert_eq!(ok(store.unfinished_rounds().await).len(), 1);

    // Illegal moves are refused before touching the database.
    let illegal = store
        .transition("r1", RoundState::Pending, RoundState::Published, "", 11)
        .await;
    assert!(matches!(illegal, Err(CoordinatorError::Internal(_))));
    // A move from a state the round is not in does nothing.
    assert!(!ok(store
        .transition("r1", RoundState::Sampling, RoundState::Training, "", 11)
        .await));
    assert!(ok(store
        .transition("r1", RoundState::Pending, RoundState::Sampling, "", 11)
        .await));
    let nodes = vec!["node-b".to_owned(), "node-a".to_owned()];
    assert!(ok(store.start_training("r1", &nodes, 1.7, 5_000, 12).await));
    // Only once.
    assert!(!ok(store
        .start_training("r1", &nodes, 1.7, 5_000, 13)
        .await));
    let stored = ok(store.round("r1").await).unwrap_or_else(|| panic!("no round"));
    assert_eq!(stored.state, RoundState::Training);
    assert_eq!(stored.sampled_nodes, ["node-a", "node-b"]);
    assert_eq!(stored.expected_clients, 1.7);
    assert_eq!(stored.training_deadline_unix_ms, 5_000);
    assert_eq!(ok(store.pending_tasks_for("node-a", 100).await), ["r1"]);
    assert!(ok(store.pending_tasks_for("node-a", 5_000).await).is_empty());
    assert!(ok(store.pending_tasks_for("node-z", 100).await).is_empty());
    let for_polls = ok(store.training_rounds_for_polls().await);
    assert_eq!(for_polls.len(), 1);
    assert_eq!(for_polls[0].round_id, "r1");
    assert_eq!(for_polls[0].training_deadline_unix_ms, 5_000);
    let mut sampled: Vec<&str> = for_polls[0].sampled.iter().map(String::as_str).collect();
    sampled.sort_unstable();
    assert_eq!(sampled, ["node-a", "node-b"]);
    assert!(for_polls[0].uploaded.is_empty());

    assert!(ok(store
        .transition(
            "r1",
            RoundState::Training,
            RoundState::Failed,
            "too few",
            14
        )
        .await));
    let stored = ok(store.round("r1").await).unwrap_or_else(|| panic!("no round"));
    assert_eq!(stored.state, RoundState::Failed);
    assert_eq!(stored.failure_reason, "too few");
    assert_eq!(stored.updated_unix_ms, 14);
    assert!(ok(store.unfinished_rounds().await).is_empty());
    // Nothing leaves a final state.
    assert!(
        store
            .transition("r1", RoundState::Failed, RoundState::Cancelled, "", 15)
            .await
            .is_err()
    );
    let listed: Vec<String> = ok(store.list_rounds("shelf").await)
        .into_iter()
        .map(|r| r.round_id)
        .collect();
    assert_eq!(listed, ["r1"]);
    assert!(ok(store.list_rounds("other").await).is_empty());
}

async fn updates_are_recorded_once_and_only_while_training(store: &Store) {
    training_round(store, "r1", "shelf", &["node-0", "node-1"]).await;
    assert!(ok(store.insert_update(&update("r1", "node-0", 100)).await));
    // The same node again (a retry): nothing new.
    assert!(!ok(store.insert_update(&update("r1", "node-0", 101)).await));
    // After the deadline: refused.
    assert!(!ok(store
        .insert_update(&update("r1", "node-1", 10_000))
        .await));
    assert!(ok(store.insert_update(&update("r1", "node-1", 200)).await));
    assert!(ok(store.has_update("r1", "node-0").await));
    assert!(!ok(store.has_update("r1", "node-9").await));
    let updates = ok(store.updates("r1").await);
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].node_id, "node-0");
    assert!(updates[0].within_clip);
    assert!(!updates[1].within_clip);
    assert_eq!(updates[0].received_unix_ms, 100);
    assert_eq!(updates[0].num_examples, 40);
    assert_eq!(updates[0].norm, 0.75);
    assert_eq!(updates[0].blob_path, "updates/r1/node-0.bin");
    assert!(ok(store.pending_tasks_for("node-0", 300).await).is_empty());
    let for_polls = ok(store.training_rounds_for_polls().await);
    let r1 = for_polls
        .iter()
        .find(|r| r.round_id == "r1")
        .unwrap_or_else(|| panic!("r1 is training"));
    let mut uploaded: Vec<&str> = r1.uploaded.iter().map(String::as_str).collect();
    uploaded.sort_unstable();
    assert_eq!(uploaded, ["node-0", "node-1"]);

    ok(store.count_refused("r1").await);
    ok(store.count_refused("r1").await);
    let stored = ok(store.round("r1").await).unwrap_or_else(|| panic!("no round"));
    assert_eq!(stored.updates_refused, 2);
    assert_eq!(stored.updates_accepted, 2);

    // Once aggregating, no update is recorded any more.
    assert!(ok(store
        .transition("r1", RoundState::Training, RoundState::Aggregating, "", 300)
        .await));
    assert!(!ok(store.insert_update(&update("r1", "node-2", 301)).await));
    // An update for a round that does not exist is not recorded either.
    assert!(!ok(store.insert_update(&update("nope", "node-0", 1)).await));
}

async fn updates_committed_in_a_group_are_each_judged_alone(store: &Store) {
    training_round(store, "r1", "shelf", &["node-0", "node-1", "node-2"]).await;
    let batch = [
        update("r1", "node-0", 100),
        // The same node twice in one group: the second is a retry.
        update("r1", "node-0", 101),
        // After the deadline.
        update("r1", "node-1", 10_000),
        update("r1", "node-2", 102),
        update("nope", "node-0", 103),
    ];
    assert_eq!(
        ok(store.insert_updates(&batch).await),
        vec![true, false, false, true, false]
    );
    let stored: Vec<String> = ok(store.updates("r1").await)
        .into_iter()
        .map(|u| u.node_id)
        .collect();
    assert_eq!(stored, ["node-0", "node-2"]);
    assert!(ok(store.insert_updates(&[]).await).is_empty());
}

async fn publishing_is_atomic_and_happens_once(store: &Store) {
    ok(store.insert_version(&version("shelf", 1, "")).await);
    ok(store.advance_stable("shelf", 1, "init", 1).await);
    training_round(store, "r1", "shelf", &["node-0"]).await;
    assert!(ok(store.insert_update(&update("r1", "node-0", 100)).await));
    // Not yet aggregating: nothing is published.
    assert!(!ok(store
        .publish("r1", &version("shelf", 2, "r1"), Some(0.9), true, 200)
        .await));
    assert!(ok(store.version("shelf", 2).await).is_none());
    assert!(ok(store
        .transition("r1", RoundState::Training, RoundState::Aggregating, "", 150)
        .await));
    assert!(ok(store
        .publish("r1", &version("shelf", 2, "r1"), Some(0.9), true, 200)
        .await));
    // A second publication of the same round (a restarted driver): refused, nothing written.
    assert!(!ok(store
        .publish("r1", &version("shelf", 3, "r1"), Some(0.4), true, 201)
        .await));
    assert!(ok(store.version("shelf", 3).await).is_none());
    let stored = ok(store.round("r1").await).unwrap_or_else(|| panic!("no round"));
    assert_eq!(stored.state, RoundState::Published);
    assert_eq!(stored.published_version, 2);
    assert_eq!(stored.next_clip_norm, Some(0.9));
    assert_eq!(ok(store.adaptive_clip_norm("shelf").await), Some(0.9));
    let channels = ok(store.channels("shelf").await);
    assert_eq!(channels.stable.map(|s| s.version), Some(2));
    let ledger = ok(store.ledger("shelf").await);
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].status, LedgerStatus::Spent);
    let authors = ok(store.version_authors("shelf").await);
    assert!(authors.contains(&(2, "ml-engineer".to_owned(), String::new())));
    assert!(authors.contains(&(1, String::new(), String::new())));
}

async fn a_round_ended_before_its_draw_is_refunded_and_after_it_is_spent(store: &Store) {
    // Cancelled while pending: no store was ever drawn.
    admit(store, &round("early", "shelf", 10)).await;
    assert!(ok(store
        .transition("early", RoundState::Pending, RoundState::Cancelled, "", 11)
        .await));
    // Failed after its draw (even without an update).
    training_round(store, "drawn", "shelf", &["node-0"]).await;
    assert!(ok(store
        .transition("drawn", RoundState::Training, RoundState::Failed, "", 20)
        .await));
    // Charged explicitly while running.
    training_round(store, "charged", "shelf", &["node-0"]).await;
    ok(store.charge_round("charged", 30).await);
    let statuses: Vec<(String, LedgerStatus)> = ok(store.ledger("shelf").await)
        .into_iter()
        .map(|e| (e.round_id, e.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("charged", LedgerStatus::Spent),
            ("drawn", LedgerStatus::Spent),
            ("early", LedgerStatus::Refunded),
        ]
        .map(|(r, s)| (r.to_owned(), s))
        .to_vec()
    );
}

async fn delta_is_frozen_once_rounds_are_charged(store: &Store) {
    let budget = Budget {
        epsilon_max: Some(8.0),
        delta: 1e-5,
    };
    ok(store.set_budget("shelf", &budget, 1).await);
    assert_eq!(ok(store.budget("shelf").await), Some(budget));
    assert_eq!(ok(store.budget("other").await), None);
    // Nothing charged yet: δ may still change.
    let other_delta = Budget {
        epsilon_max: None,
        delta: 1e-6,
    };
    ok(store.set_budget("shelf", &other_delta, 2).await);
    ok(store.set_budget("shelf", &budget, 3).await);
    training_round(store, "r1", "shelf", &["node-0"]).await;
    let refused = store.set_budget("shelf", &other_delta, 4).await;
    assert!(matches!(
        refused,
        Err(CoordinatorError::FailedPrecondition(_))
    ));
    // ε_max may change.
    let raised = Budget {
        epsilon_max: Some(12.0),
        delta: 1e-5,
    };
    ok(store.set_budget("shelf", &raised, 5).await);
    assert_eq!(ok(store.budget("shelf").await), Some(raised));
    // Invalid values never reach the database.
    let bad = Budget {
        epsilon_max: Some(f64::NAN),
        delta: 1e-5,
    };
    assert!(matches!(
        store.set_budget("shelf", &bad, 6).await,
        Err(CoordinatorError::InvalidArgument(_))
    ));
    assert_eq!(ok(store.budget("shelf").await), Some(raised));
}

/// Eight round starts of one lineage at once: exactly one is admitted (the others are refused
/// as a second running round), and across many rounds a budget allowing three charged rounds
/// admits exactly three, however the starts interleave.
async fn concurrent_admissions_admit_one_round_and_never_overspend(store: &Store) {
    const ALLOWED: usize = 3;
    let store = Arc::new(store.clone());
    let mut admitted_total = 0;
    for wave in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let record = round(&format!("w{wave}-{i}"), "shelf", 100 * wave + i);
                store
                    .admit_round(&record, |history, _next| {
                        let charged: u64 = history.iter().map(|e| e.rounds).sum();
                        Ok(if charged as usize >= ALLOWED {
                            Err("budget spent")
                        } else {
                            Ok(Some(charged as f64 + 1.0))
                        })
                    })
                    .await
                    .map(|decision| decision.map(|entry| entry.round_id))
            }));
        }
        let mut admitted = Vec::new();
        for task in tasks {
            match ok(task.await) {
                Ok(Ok(round_id)) => admitted.push(round_id),
                Ok(Err(_budget)) => {}
                Err(CoordinatorError::FailedPrecondition(_)) => {}
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert!(admitted.len() <= 1, "wave {wave} admitted {admitted:?}");
        // End the admitted round after its draw, so it stays charged.
        for round_id in &admitted {
            assert!(ok(store
                .transition(round_id, RoundState::Pending, RoundState::Sampling, "", 1)
                .await));
            assert!(ok(store
                .start_training(round_id, &["n".to_owned()], 1.0, 2, 1)
                .await));
            assert!(ok(store
                .transition(round_id, RoundState::Training, RoundState::Failed, "", 3)
                .await));
        }
        admitted_total += admitted.len();
    }
    assert_eq!(admitted_total, ALLOWED);
    let ledger = ok(store.ledger("shelf").await);
    assert_eq!(ledger.len(), ALLOWED);
    assert!(ledger.iter().all(|e| e.status == LedgerStatus::Spent));
}

/// Uploads racing the move to `aggregating`: every update the store acknowledged is among
/// those the aggregation reads right after that move.
async fn an_acknowledged_update_is_always_among_those_aggregated(store: &Store) {
    // Several races, as one may happen to order itself safely.
    for race in 0..4 {
        let round_id = format!("race-{race}");
        let nodes: Vec<String> = (0..48).map(|i| format!("node-{i:02}")).collect();
        let node_refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
        training_round(store, &round_id, &format!("shelf-{race}"), &node_refs).await;
        let store = Arc::new(store.clone());
        let mut uploads = Vec::new();
        for node in &nodes {
            let store = Arc::clone(&store);
            let row = update(&round_id, node, 500);
            uploads.push(tokio::spawn(async move {
                let acknowledged = ok(store.insert_update(&row).await);
                (row.node_id, acknowledged)
            }));
        }
        let aggregator = {
            let store = Arc::clone(&store);
            let round_id = round_id.clone();
            tokio::spawn(async move {
                for _ in 0..race {
                    tokio::task::yield_now().await;
                }
                assert!(ok(store
                    .transition(
                        &round_id,
                        RoundState::Training,
                        RoundState::Aggregating,
                        "",
                        600
                    )
                    .await));
                ok(store.updates(&round_id).await)
                    .into_iter()
                    .map(|u| u.node_id)
                    .collect::<BTreeSet<String>>()
            })
        };
        let mut acknowledged = BTreeSet::new();
        for upload in uploads {
            let (node, ack) = ok(upload.await);
            if ack {
                acknowledged.insert(node);
            }
        }
        let aggregated = ok(aggregator.await);
        assert_eq!(
            acknowledged, aggregated,
            "race {race}: acknowledged updates and the ones aggregated differ"
        );
    }
}

async fn nodes_are_upserted_and_found_online(store: &Store) {
    use crate::presence::{Pending, Reported};
    let seen = |node: &str,
                at: i64,
                lineage: Option<&str>,
                version: Option<u64>,
                backend: Option<&str>| {
        (
            node.to_owned(),
            Pending {
                reported: Reported {
                    lineage: lineage.map(str::to_owned),
                    installed_version: version,
                    backend: backend.map(str::to_owned),
                },
                seen_unix_ms: at,
            },
        )
    };
    // A bare "still there" for an unknown node, and a heartbeat's full report, in one batch.
    ok(store
        .record_presence(&[
            seen("node-b", 100, None, None, None),
            seen("node-a", 50, Some("shelf"), Some(3), Some("cpu")),
        ])
        .await);
    // A poll's report (no backend: the one recorded stays) and a bare timestamp.
    ok(store
        .record_presence(&[
            seen("node-b", 200, Some("shelf"), Some(4), None),
            seen("node-a", 300, None, None, None),
        ])
        .await);
    ok(store
        .record_presence(&[seen("node-a", 300, Some("shelf"), Some(3), None)])
        .await);
    ok(store.record_presence(&[]).await);
    let nodes = ok(store.list_nodes().await);
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].node_id, "node-a");
    assert_eq!(nodes[0].last_seen_unix_ms, 300);
    assert_eq!(nodes[0].installed_version, 3);
    assert_eq!(nodes[0].backend, "cpu");
    assert_eq!(nodes[1].installed_version, 4);
    assert_eq!(nodes[1].lineage, "shelf");
    assert_eq!(nodes[1].backend, "");
    assert_eq!(
        ok(store.online_nodes("shelf", 150).await),
        ["node-a", "node-b"]
    );
    assert_eq!(ok(store.online_nodes("shelf", 250).await), ["node-a"]);
    assert!(ok(store.online_nodes("other", 0).await).is_empty());
}

async fn channels_promote_canaries_and_never_move_stable_back(store: &Store) {
    for v in 1..=3 {
        ok(store.insert_version(&version("shelf", v, "")).await);
    }
    ok(store.advance_stable("shelf", 2, "init", 1).await);
    // advance_stable never moves back.
    ok(store.advance_stable("shelf", 1, "late", 2).await);
    assert_eq!(
        ok(store.channels("shelf").await).stable.map(|s| s.version),
        Some(2)
    );
    let channels = ok(store.promote("shelf", 3, Some(10), "ops", 3).await);
    let canary = channels
        .canary
        .clone()
        .unwrap_or_else(|| panic!("no canary"));
    assert_eq!((canary.version, canary.percent), (3, 10));
    assert_eq!(canary.updated_by, "ops");
    assert!(matches!(
        store.promote("shelf", 1, None, "ops", 4).await,
        Err(CoordinatorError::FailedPrecondition(_))
    ));
    assert!(matches!(
        store.promote("shelf", 2, Some(10), "ops", 4).await,
        Err(CoordinatorError::FailedPrecondition(_))
    ));
    assert!(matches!(
        store.promote("shelf", 3, Some(0), "ops", 4).await,
        Err(CoordinatorError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.promote("shelf", 9, None, "ops", 4).await,
        Err(CoordinatorError::NotFound(_))
    ));
    // Promoting the canary's version to stable clears the canary.
    let channels = ok(store.promote("shelf", 3, None, "ops", 5).await);
    assert_eq!(channels.stable.map(|s| s.version), Some(3));
    assert!(channels.canary.is_none());

    // A rollback is refused while a round runs, and otherwise publishes and becomes stable.
    admit(store, &round("running", "shelf", 10)).await;
    let mut rollback = version("shelf", 4, "");
    rollback.weights_sha256 = format!("{:064x}", 1);
    assert!(matches!(
        store.publish_rollback(&rollback, "admin", 6).await,
        Err(CoordinatorError::FailedPrecondition(_))
    ));
    assert!(ok(store.version("shelf", 4).await).is_none());
    assert!(ok(store
        .transition("running", RoundState::Pending, RoundState::Cancelled, "", 7)
        .await));
    ok(store.publish_rollback(&rollback, "admin", 8).await);
    let channels = ok(store.channels("shelf").await);
    assert_eq!(channels.stable.map(|s| s.version), Some(4));
    let authors = ok(store.version_authors("shelf").await);
    assert!(authors.contains(&(4, String::new(), "admin".to_owned())));
}

fn release(store_id: &str, key: &str, window_start: i64) -> ReleaseRow {
    ReleaseRow {
        store_id: store_id.to_owned(),
        idempotency_key: key.to_owned(),
        camera_id: 2,
        window_start_unix: window_start,
        window_secs: 3_600,
        slots_per_frame: 12,
        seconds_per_frame: 5,
        rho: 0.01,
        metrics: vec![
            MetricValueRow {
                name: "occupancy".to_owned(),
                value: Some(4.25),
                suppressed: false,
                noise_scale: 1.5,
                sensitivity: 1.0,
            },
            MetricValueRow {
                name: "out_of_stock_events".to_owned(),
                value: None,
                suppressed: true,
                noise_scale: 2.0,
                sensitivity: 1.0,
            },
        ],
    }
}

async fn metric_releases_are_idempotent_and_filtered_by_window(store: &Store) {
    assert!(ok(store
        .insert_metric_release(&release("store-a", "k1", 3_600), 1)
        .await));
    // The same key again (a retried sync) is not stored twice, even with other values.
    let mut retry = release("store-a", "k1", 3_600);
    retry.metrics[0].value = Some(99.0);
    assert!(!ok(store.insert_metric_release(&retry, 2).await));
    assert!(ok(store
        .insert_metric_release(&release("store-b", "k1", 7_200), 3)
        .await));
    let all = ok(store.metric_releases(0, 0).await);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], release("store-a", "k1", 3_600));
    assert_eq!(all[1].store_id, "store-b");
    let later = ok(store.metric_releases(7_200, 0).await);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].store_id, "store-b");
    let earlier = ok(store.metric_releases(0, 7_200).await);
    assert_eq!(earlier.len(), 1);
    assert_eq!(earlier[0].metrics[1].value, None);
    assert!(earlier[0].metrics[1].suppressed);
}

fn frame_request(request_id: &str, expires: i64) -> FrameRequestRow {
    FrameRequestRow {
        request_id: request_id.to_owned(),
        store_id: "store-a".to_owned(),
        camera_id: Some(3),
        from_unix_ms: 1_000,
        to_unix_ms: 2_000,
        reason: "shelf 4 misdetections".to_owned(),
        requested_by: "ml-engineer".to_owned(),
        recipient_key: vec![9; 32],
        state: "pending".to_owned(),
        decided_by: String::new(),
        created_unix_ms: 100,
        expires_unix_ms: expires,
        frames: 0,
        export_bytes: 0,
        export_path: None,
    }
}

async fn frame_requests_follow_their_states_with_a_trail(store: &Store) {
    ok(store
        .insert_frame_request(&frame_request("req-1", 5_000))
        .await);
    ok(store
        .insert_frame_request(&frame_request("req-2", 5_000))
        .await);
    assert_eq!(
        ok(store.frame_request("req-1").await),
        Some(frame_request("req-1", 5_000))
    );
    // Not approved yet: nothing for the store to export, and delivery is refused.
    assert!(ok(store.approved_frame_requests("store-a", 200).await).is_empty());
    assert!(matches!(
        store
            .mark_frames_delivered("req-1", "store-a", "exports/req-1", 3, 1_000, 200)
            .await,
        Err(CoordinatorError::FailedPrecondition(_))
    ));
    ok(store
        .decide_frame_request("req-1", true, "privacy-officer", "ok", 300)
        .await);
    // A second decision is refused.
    assert!(matches!(
        store
            .decide_frame_request("req-1", false, "privacy-officer", "", 301)
            .await,
        Err(CoordinatorError::FailedPrecondition(_))
    ));
    ok(store
        .decide_frame_request("req-2", false, "privacy-officer", "no", 302)
        .await);
    let approved = ok(store.approved_frame_requests("store-a", 400).await);
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].decided_by, "privacy-officer");
    assert!(ok(store.approved_frame_requests("store-b", 400).await).is_empty());
    assert_eq!(ok(store.all_approved_frame_requests(400).await), approved);
    assert!(ok(store.all_approved_frame_requests(5_000).await).is_empty());
    // The wrong store cannot deliver it.
    assert!(
        store
            .mark_frames_delivered("req-1", "store-b", "exports/req-1", 3, 1_000, 500)
            .await
            .is_err()
    );
    ok(store
        .mark_frames_delivered("req-1", "store-a", "exports/req-1", 3, 1_000, 500)
        .await);
    ok(store
        .record_frame_request_event("req-1", "ml-engineer", "downloaded", "", 600)
        .await);
    assert!(ok(store.expire_frame_requests(4_999).await).is_empty());
    let expired = ok(store.expire_frame_requests(5_000).await);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].export_path.as_deref(), Some("exports/req-1"));
    assert_eq!(expired[0].frames, 3);
    assert_eq!(expired[0].export_bytes, 1_000);
    ok(store.forget_frame_export("req-1", 5_001).await);
    assert!(ok(store.expire_frame_requests(6_000).await).is_empty());
    let states: Vec<(String, String)> = ok(store.list_frame_requests().await)
        .into_iter()
        .map(|r| (r.request_id, r.state))
        .collect();
    assert!(states.contains(&("req-1".to_owned(), "expired".to_owned())));
    assert!(states.contains(&("req-2".to_owned(), "denied".to_owned())));
    let actions: Vec<String> = ok(store.frame_request_events("req-1").await)
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "requested",
            "approved",
            "delivered",
            "downloaded",
            "expired",
            "export deleted"
        ]
    );
}

fn quarantined(round_id: &str, node_id: &str, blob: bool, at: i64) -> QuarantineRow {
    QuarantineRow {
        round_id: round_id.to_owned(),
        node_id: node_id.to_owned(),
        reason: format!("update value 3 is not finite (NaN) from {node_id}"),
        received_bytes: 4096,
        sha256: format!("sha-{node_id}-{at}"),
        blob_path: blob.then(|| format!("quarantine/{round_id}/{node_id}-{at}.bin")),
        received_unix_ms: at,
    }
}

async fn quarantined_updates_are_kept_apart_from_accepted_ones(store: &Store) {
    training_round(store, "r1", "shelf", &["node-0", "node-1"]).await;
    training_round(store, "r2", "aisle", &["node-0"]).await;
    ok(store
        .insert_quarantined(&quarantined("r1", "node-1", true, 100))
        .await);
    ok(store
        .insert_quarantined(&quarantined("r1", "node-1", false, 101))
        .await);
    ok(store
        .insert_quarantined(&quarantined("r2", "node-0", true, 102))
        .await);
    assert!(ok(store.insert_update(&update("r1", "node-0", 103)).await));

    assert_eq!(ok(store.count_quarantined_blobs("r1", "node-1").await), 1);
    assert_eq!(ok(store.count_quarantined_blobs("r1", "node-0").await), 0);
    let r1 = ok(store.list_quarantined(Some("r1")).await);
    assert_eq!(
        r1,
        vec![
            quarantined("r1", "node-1", true, 100),
            quarantined("r1", "node-1", false, 101)
        ]
    );
    assert_eq!(ok(store.list_quarantined(None).await).len(), 3);
    assert!(ok(store.list_quarantined(Some("nope")).await).is_empty());
    // Quarantine never makes an update count as received, nor blocks the node's real one.
    let updates = ok(store.updates("r1").await);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].node_id, "node-0");
    assert!(!ok(store.has_update("r1", "node-1").await));
    assert!(ok(store.insert_update(&update("r1", "node-1", 104)).await));
}

async fn a_round_lease_has_one_holder_until_it_expires(store: &Store) {
    training_round(store, "r1", "shelf", &["node-a"]).await;
    // Nobody drives r1 yet.
    assert_eq!(ok(store.unleased_unfinished_rounds(100).await), ["r1"]);
    assert!(ok(store
        .acquire_round_lease("r1", "replica-a", 100, 1_100)
        .await));
    assert!(ok(store.unleased_unfinished_rounds(100).await).is_empty());
    // Another replica cannot take a live lease; the holder renews it.
    assert!(!ok(store
        .acquire_round_lease("r1", "replica-b", 500, 1_500)
        .await));
    assert!(ok(store
        .acquire_round_lease("r1", "replica-a", 600, 1_600)
        .await));
    assert_eq!(
        ok(store.round_lease("r1").await),
        Some(("replica-a".to_owned(), 1_600))
    );
    // Expired: free for the taking, and then the old holder cannot renew it.
    assert_eq!(ok(store.unleased_unfinished_rounds(1_600).await), ["r1"]);
    assert!(ok(store
        .acquire_round_lease("r1", "replica-b", 1_600, 2_600)
        .await));
    assert!(!ok(store
        .acquire_round_lease("r1", "replica-a", 1_700, 2_700)
        .await));
    // Only the holder releases it.
    ok(store.release_round_lease("r1", "replica-a").await);
    assert!(ok(store.round_lease("r1").await).is_some());
    ok(store.release_round_lease("r1", "replica-b").await);
    assert_eq!(ok(store.round_lease("r1").await), None);
    // A finished round needs no driver.
    assert!(ok(store
        .transition("r1", RoundState::Training, RoundState::Cancelled, "", 2_000)
        .await));
    assert!(ok(store.unleased_unfinished_rounds(3_000).await).is_empty());

    let before = ok(store.change_feed().await);
    assert_eq!(ok(store.bump_change_feed().await), before + 1);
    assert_eq!(ok(store.bump_change_feed().await), before + 2);
    assert_eq!(ok(store.change_feed().await), before + 2);
}
