//! The audit log end to end: what a pilot leaves verifies with `backroom audit verify`, and an
//! entry edited or deleted with SQL afterwards is reported by number; the offline tools'
//! entries (enrolments queued before the coordinator's first start, key rotations) reach it.

use std::path::Path;
use std::process::{Command, Output};

use backroom_coordinator::{Coordinator, CoordinatorConfig};

fn backroom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backroom"))
}

fn audit(args: &[&str], data_dir: &Path) -> Output {
    backroom()
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `audit verify`: (exit code, stdout).
pub fn verify(data_dir: &Path) -> (i32, String) {
    let out = audit(&["verify"], data_dir);
    (out.status.code().unwrap_or(-1), text(&out.stdout))
}

/// `audit list --json`.
pub fn entries(data_dir: &Path) -> Vec<serde_json::Value> {
    let out = audit(&["list", "--json"], data_dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn seq_of(entries: &[serde_json::Value], action: &str) -> i64 {
    entries
        .iter()
        .find(|e| e["action"] == action)
        .and_then(|e| e["seq"].as_i64())
        .unwrap_or_else(|| panic!("no {action} entry in {entries:#?}"))
}

async fn sqlite(db: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
}

async fn exec(pool: &sqlx::SqlitePool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pilots_audit_log_verifies_and_reports_an_edited_or_deleted_entry() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("pilot");
    let pilot = backroom()
        .args(["pilot", "--json", "--stores", "2", "--rounds", "1"])
        .args([
            "--local-steps",
            "5",
            "--train-samples",
            "64",
            "--backend",
            "cpu",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    assert!(
        pilot.status.success(),
        "pilot failed: {}",
        text(&pilot.stderr)
    );

    // The pilot's kept directory is accepted as it is (its coordinator is data/coordinator).
    let (code, stdout) = verify(&data);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("audit log OK: "), "{stdout}");
    let log = entries(&data);
    let actions: Vec<&str> = log.iter().filter_map(|e| e["action"].as_str()).collect();
    for expected in [
        "enrol",
        "model.publish",
        "round.start",
        "round.publish",
        "metrics.query",
    ] {
        assert!(actions.contains(&expected), "no {expected} in {actions:?}");
    }
    let count = log.len();
    assert!(stdout.contains(&format!("{count} entries")), "{stdout}");
    let subjects: Vec<&str> = log.iter().filter_map(|e| e["subject"].as_str()).collect();
    for enrolled in ["admin/pilot-admin", "node/store-1", "node/store-2"] {
        assert!(
            subjects.contains(&enrolled),
            "{enrolled} not enrolled: {subjects:?}"
        );
    }
    let start = &log[usize::try_from(seq_of(&log, "round.start") - 1).unwrap_or(0)];
    assert_eq!(start["actor"], "admin/pilot-admin", "{start}");
    let publish = log.iter().find(|e| e["action"] == "round.publish");
    assert_eq!(publish.map(|e| &e["actor"]), Some(&"coordinator".into()));

    // Edit one entry: verify names it. (The table's triggers refuse edits, so drop them first,
    // as someone with write access to the database would.)
    let db = sqlite(&data.join("coordinator/coordinator.db")).await;
    exec(&db, "DROP TRIGGER audit_log_no_update").await;
    exec(&db, "DROP TRIGGER audit_log_no_delete").await;
    let edited = seq_of(&log, "round.start");
    let original: String = sqlx::query_scalar("SELECT actor FROM audit_log WHERE seq = $1")
        .bind(edited)
        .fetch_one(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("UPDATE audit_log SET actor = 'admin/someone-else' WHERE seq = $1")
        .bind(edited)
        .execute(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, stdout) = verify(&data);
    assert_eq!(code, 65, "{stdout}");
    assert!(
        stdout.contains(&format!("entry {edited}: edited")),
        "the edited entry is not named: {stdout}"
    );

    // Put it back: the log verifies again.
    sqlx::query("UPDATE audit_log SET actor = $1 WHERE seq = $2")
        .bind(&original)
        .bind(edited)
        .execute(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(verify(&data).0, 0);

    // Delete the last entry: the rest is a valid chain, the head file says it was longer.
    exec(&db, &format!("DELETE FROM audit_log WHERE seq = {count}")).await;
    db.close().await;
    let (code, stdout) = verify(&data);
    assert_eq!(code, 65, "{stdout}");
    assert!(
        stdout.contains(&format!("entry {count}: missing")),
        "the deleted last entry is not named: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_enrolments_and_key_changes_reach_the_audit_log() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("coordinator");

    // No coordinator has run here: the enrolment is queued for it.
    let enroll = backroom()
        .args(["enroll", "--data-dir"])
        .arg(&data)
        .args(["--ml-engineer", "bob", "--out"])
        .arg(dir.path().join("bob"))
        .env("USER", "carol")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(enroll.status.success(), "{}", text(&enroll.stderr));
    assert!(data.join("audit.pending").is_file());
    let (code, stdout) = verify(&data);
    assert_eq!(code, 64, "no database yet is a usage error: {stdout}");
    let usage = backroom()
        .args(["audit", "verify"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(usage.status.code(), Some(64));

    // The coordinator's first start appends it (before its own first entry).
    let mut config = CoordinatorConfig::for_data_dir(&data);
    config.listen = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let coordinator = Coordinator::start(config)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    drop(coordinator);
    assert!(!data.join("audit.pending").exists());
    let (code, stdout) = verify(&data);
    assert_eq!(code, 0, "{stdout}");
    let log = entries(&data);
    assert_eq!(log[0]["action"], "enrol", "{log:#?}");
    assert_eq!(log[0]["actor"], "cli/carol");
    assert_eq!(log[0]["subject"], "ml-engineer/bob");
    assert_eq!(log[0]["details"]["role"], "ml-engineer");
    assert_eq!(
        log[0]["details"]["certificate_sha256"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    assert_eq!(log[1]["action"], "model.publish");

    // With its database there, `keys rotate` appends directly.
    let rotate = backroom()
        .args(["keys", "rotate", "--data-dir"])
        .arg(&data)
        .env("USER", "carol")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    let (code, stdout) = verify(&data);
    assert_eq!(code, 0, "{stdout}");
    let log = entries(&data);
    let rotated = log.last().cloned().unwrap_or_default();
    assert_eq!(rotated["action"], "key.rotate", "{log:#?}");
    assert_eq!(rotated["details"]["key_set_version"], 2, "{rotated}");

    // `audit list --limit 1` shows the newest entry only.
    let out = audit(&["list", "--limit", "1"], &data);
    let listed = text(&out.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("key.rotate"), "{listed}");

    // Removing the head file is reported.
    std::fs::remove_file(data.join("audit.head")).unwrap_or_else(|e| panic!("{e}"));
    let (code, stdout) = verify(&data);
    assert_eq!(code, 65, "{stdout}");
    assert!(stdout.contains("head mismatch"), "{stdout}");
}
