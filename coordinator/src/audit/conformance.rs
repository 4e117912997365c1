//! The audit log on each database (run by `store_conformance.rs` against SQLite and
//! PostgreSQL): appends chain and verify, and every kind of tampering is reported where it is.

use std::sync::Arc;

use serde_json::json;

use super::{AuditLog, Break, BreakKind, HEAD_FILE, Head, Verified, hash_fields, read_head};
use crate::store::{Backend, Store};

fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

async fn exec(store: &Store, sql: &str) {
    ok(sqlx::query(sql).execute(&store.writer).await);
}

/// Drops the append-only triggers, as someone tampering with the database would first.
async fn unprotect(store: &Store) {
    match store.backend() {
        Backend::Sqlite => {
            exec(store, "DROP TRIGGER IF EXISTS audit_log_no_update").await;
            exec(store, "DROP TRIGGER IF EXISTS audit_log_no_delete").await;
        }
        Backend::Postgres => {
            exec(
                store,
                "DROP TRIGGER IF EXISTS audit_log_no_update_or_delete ON audit_log",
            )
            .await;
        }
    }
}

/// An empty log with a head directory of its own, then five entries.
async fn five_entries(store: &Store) -> (tempfile::TempDir, AuditLog) {
    unprotect(store).await;
    exec(store, "DELETE FROM audit_log").await;
    let dir = ok(tempfile::tempdir());
    let log = AuditLog::new(store.clone(), dir.path());
    let entries = [
        ("cli/root", "enrol", "node/store-1", json!({"role": "node"})),
        (
            "admin/alice",
            "round.start",
            "r-1",
            json!({"lineage": "shelfnet"}),
        ),
        ("coordinator", "round.publish", "r-1", json!({"version": 2})),
        ("operations/olga", "metrics.query", "", json!({"rows": 12})),
        (
            "privacy-officer/pat",
            "frames.approve",
            "fr-1",
            json!({"note": "ok"}),
        ),
    ];
    for (actor, action, subject, details) in entries {
        ok(log.append(actor, action, subject, &details).await);
    }
    (dir, log)
}

async fn verified(log: &AuditLog) -> Verified {
    match ok(log.verify().await) {
        Ok(verified) => verified,
        Err(broken) => panic!("the log should verify: {broken}"),
    }
}

async fn broken(log: &AuditLog) -> Break {
    match ok(log.verify().await) {
        Ok(verified) => panic!("tampering went unnoticed: {verified:?}"),
        Err(broken) => broken,
    }
}

fn assert_break(found: &Break, kind: BreakKind, seq: u64) {
    assert_eq!(
        (found.kind, found.seq),
        (kind, seq),
        "expected {} at entry {seq}, got: {found}",
        kind.as_str()
    );
}

pub(crate) async fn audit_log_appends_a_chain_that_verifies_and_refuses_updates(store: &Store) {
    let dir = ok(tempfile::tempdir());
    let log = AuditLog::new(store.clone(), dir.path());
    let empty = verified(&log).await;
    assert_eq!((empty.entries, empty.head), (0, None));
    let first = ok(log
        .append(
            "admin/alice",
            "round.start",
            "r-1",
            &json!({"z": 1, "a": {"y": 2, "b": 3}}),
        )
        .await);
    assert_eq!(first.seq, 1);
    assert_eq!(first.prev_hash, super::GENESIS);
    assert_eq!(first.details, r#"{"a":{"b":3,"y":2},"z":1}"#);
    let second = ok(log
        .append("coordinator", "round.publish", "r-1", &json!({}))
        .await);
    assert_eq!((second.seq, &second.prev_hash), (2, &first.hash));
    assert_eq!(second.hash, second.computed_hash());
    let head = ok(read_head(&dir.path().join(HEAD_FILE)));
    assert_eq!(
        head,
        Some(Head {
            seq: 2,
            hash: second.hash.clone()
        })
    );
    let summary = verified(&log).await;
    assert_eq!((summary.entries, summary.unanchored), (2, 0));
    assert_eq!(summary.last, head);
    let stored = ok(log.entries_after(0, 10).await);
    assert_eq!(stored, vec![first, second]);

    // The database refuses edits and deletions while its triggers are in place.
    for statement in [
        "UPDATE audit_log SET subject = 'r-2' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 2",
    ] {
        let refused = sqlx::query(statement).execute(&store.writer).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("append-only"), "{statement}: {message:?}");
    }

    // Appenders of two processes (here two logs on one database and directory) never fork
    // the chain.
    let other = Arc::new(AuditLog::new(store.clone(), dir.path()));
    let log = Arc::new(log);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let log = Arc::clone(if i % 2 == 0 { &log } else { &other });
        tasks.push(tokio::spawn(async move {
            log.append(
                "node/store-1",
                "frames.deliver",
                &format!("fr-{i}"),
                &json!({"i": i}),
            )
            .await
        }));
    }
    for task in tasks {
        ok(ok(task.await));
    }
    let summary = verified(&log).await;
    assert_eq!(summary.entries, 22);
    assert_eq!(summary.head, summary.last);
}

pub(crate) async fn audit_log_reports_an_edited_entry(store: &Store) {
    let (_dir, log) = five_entries(store).await;
    exec(store, "UPDATE audit_log SET subject = 'r-9' WHERE seq = 3").await;
    assert_break(&broken(&log).await, BreakKind::Edited, 3);

    // Edited and rehashed (the encoding is public): its successor no longer links to it.
    let (_dir, log) = five_entries(store).await;
    let entry = ok(log.entries_after(2, 1).await).remove(0);
    let details = r#"{"version":3}"#;
    let rehashed = hash_fields(
        entry.seq,
        entry.time_unix_ms,
        &entry.actor,
        &entry.action,
        &entry.subject,
        details,
        &entry.prev_hash,
    );
    ok(
        sqlx::query("UPDATE audit_log SET details = $1, hash = $2 WHERE seq = 3")
            .bind(details)
            .bind(&rehashed)
            .execute(&store.writer)
            .await,
    );
    let found = broken(&log).await;
    assert_break(&found, BreakKind::Edited, 3);
    assert!(found.message.contains("rehashed"), "{found}");

    // The whole tail rewritten consistently: only the head file tells.
    let (_dir, log) = five_entries(store).await;
    let mut previous_hash = ok(log.entries_after(1, 1).await).remove(0).hash;
    for entry in ok(log.entries_after(2, 10).await) {
        let subject = if entry.seq == 3 {
            "r-9"
        } else {
            &entry.subject
        };
        let hash = hash_fields(
            entry.seq,
            entry.time_unix_ms,
            &entry.actor,
            &entry.action,
            subject,
            &entry.details,
            &previous_hash,
        );
        ok(sqlx::query(
            "UPDATE audit_log SET subject = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
        )
        .bind(subject)
        .bind(&previous_hash)
        .bind(&hash)
        .bind(i64::try_from(entry.seq).unwrap_or(i64::MAX))
        .execute(&store.writer)
        .await);
        previous_hash = hash;
    }
    assert_break(&broken(&log).await, BreakKind::HeadMismatch, 5);
}

pub(crate) async fn audit_log_reports_deleted_entries(store: &Store) {
    let (_dir, log) = five_entries(store).await;
    exec(store, "DELETE FROM audit_log WHERE seq = 3").await;
    let found = broken(&log).await;
    assert_break(&found, BreakKind::Missing, 3);
    assert!(found.message.contains("entry 3 is missing"), "{found}");

    // The last entry: the chain left is valid, the head file says it was longer.
    let (_dir, log) = five_entries(store).await;
    exec(store, "DELETE FROM audit_log WHERE seq = 5").await;
    let found = broken(&log).await;
    assert_break(&found, BreakKind::Missing, 5);
    assert!(found.message.contains("deleted"), "{found}");

    // Deleted, then an append: the head is not moved over the cut, so it stays evident.
    ok(log
        .append("admin/alice", "round.cancel", "r-2", &json!({}))
        .await);
    assert_break(&broken(&log).await, BreakKind::HeadMismatch, 5);

    // The first two: the log no longer starts at 1.
    let (_dir, log) = five_entries(store).await;
    exec(store, "DELETE FROM audit_log WHERE seq <= 2").await;
    let found = broken(&log).await;
    assert_break(&found, BreakKind::Missing, 1);
    assert!(
        found.message.contains("entries 1..2 are missing"),
        "{found}"
    );
}

pub(crate) async fn audit_log_reports_reordered_and_renumbered_entries(store: &Store) {
    // Two entries swapped.
    let (_dir, log) = five_entries(store).await;
    exec(store, "UPDATE audit_log SET seq = 100 WHERE seq = 3").await;
    exec(store, "UPDATE audit_log SET seq = 3 WHERE seq = 4").await;
    exec(store, "UPDATE audit_log SET seq = 4 WHERE seq = 100").await;
    let found = broken(&log).await;
    assert_break(&found, BreakKind::Reordered, 3);
    assert!(found.message.contains("names entry 4"), "{found}");

    // A middle entry deleted and the later ones renumbered to close the gap.
    let (_dir, log) = five_entries(store).await;
    exec(store, "DELETE FROM audit_log WHERE seq = 2").await;
    for seq in 3..=5 {
        exec(
            store,
            &format!("UPDATE audit_log SET seq = {} WHERE seq = {seq}", seq - 1),
        )
        .await;
    }
    let found = broken(&log).await;
    assert_break(&found, BreakKind::Reordered, 2);
    assert!(found.message.contains("was entry 3"), "{found}");
}

pub(crate) async fn audit_log_checks_its_head_file(store: &Store) {
    let head_path = |dir: &tempfile::TempDir| dir.path().join(HEAD_FILE);

    // A different hash for the newest entry.
    let (dir, log) = five_entries(store).await;
    ok(std::fs::write(
        head_path(&dir),
        format!("5 {}\n", "ab".repeat(32)),
    ));
    assert_break(&broken(&log).await, BreakKind::HeadMismatch, 5);

    // A head beyond the log.
    ok(std::fs::write(
        head_path(&dir),
        format!("7 {}\n", "ab".repeat(32)),
    ));
    assert_break(&broken(&log).await, BreakKind::Missing, 6);

    // Removed, or unreadable.
    ok(std::fs::remove_file(head_path(&dir)));
    assert_break(&broken(&log).await, BreakKind::HeadMismatch, 5);
    ok(std::fs::write(head_path(&dir), "five"));
    assert_break(&broken(&log).await, BreakKind::HeadMismatch, 0);

    // Behind the log: on SQLite entries nothing anchors (written around the coordinator, or
    // a crash between a commit and the head update); on PostgreSQL other replicas' entries.
    let (dir, log) = five_entries(store).await;
    let fourth = ok(log.entries_after(3, 1).await).remove(0);
    ok(std::fs::write(
        head_path(&dir),
        format!("4 {}\n", fourth.hash),
    ));
    match store.backend() {
        Backend::Sqlite => assert_break(&broken(&log).await, BreakKind::HeadMismatch, 5),
        Backend::Postgres => assert_eq!(verified(&log).await.unanchored, 1),
    }
    // The next append checks the entries after the head and moves it over them.
    let sixth = ok(log
        .append("coordinator", "frames.expire", "fr-1", &json!({}))
        .await);
    let summary = verified(&log).await;
    assert_eq!(summary.entries, 6);
    assert_eq!(summary.head.map(|h| h.hash), Some(sixth.hash));

    // An empty log with no head verifies; a log with entries and no head never gets one back
    // on SQLite (that would hide a removed head and tail).
    let (dir, log) = five_entries(store).await;
    ok(std::fs::remove_file(head_path(&dir)));
    ok(log
        .append("coordinator", "frames.expire", "fr-2", &json!({}))
        .await);
    let head = ok(read_head(&head_path(&dir)));
    match store.backend() {
        Backend::Sqlite => assert_eq!(head, None),
        Backend::Postgres => assert_eq!(head.map(|h| h.seq), Some(6)),
    }
}
