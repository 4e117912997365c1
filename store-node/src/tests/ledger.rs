//! The queue of noised releases and the privacy ledger.

use crate::camera::ClosedWindow;
use crate::ledger::{ReleaseOutcome, day_to_date, read_ledger_of, utc_days};
use crate::metrics_sync::{MetricQueue, idempotency_key, to_batch};
use crate::release::{NoisedRelease, ReleasePolicy, release_window};

const DAY: i64 = 86_400;
/// 2024-01-01T00:00:00Z.
const JAN_1: i64 = 1_704_067_200;

fn window(start: i64, secs: u32) -> ClosedWindow {
    ClosedWindow {
        camera_id: 2,
        window_start_unix: start,
        window_secs: secs,
        frames: 60,
        slot_observations: 720,
        empty_slot_observations: 40,
        out_of_stock_events: 3,
    }
}

fn release(start: i64, secs: u32, rho: f64) -> NoisedRelease {
    let policy = ReleasePolicy {
        rho_per_release: rho,
        suppress_below: 5,
        slots: 12,
        seconds_per_frame: 60,
    };
    release_window(&window(start, secs), &policy).expect("release")
}

fn key(start: i64) -> String {
    idempotency_key("store-1", 2, start)
}

#[test]
fn days_and_dates_are_utc() {
    assert_eq!(day_to_date(0), "1970-01-01");
    assert_eq!(day_to_date(JAN_1 / DAY), "2024-01-01");
    assert_eq!(day_to_date(JAN_1 / DAY + 59), "2024-02-29");
    assert_eq!(day_to_date(-1), "1969-12-31");
    let d = JAN_1 / DAY;
    assert_eq!(utc_days(JAN_1, 3600), d..=d);
    assert_eq!(utc_days(JAN_1 + DAY - 3600, 3600), d..=d);
    // A window over midnight is charged to both days.
    assert_eq!(utc_days(JAN_1 + DAY - 1800, 3600), d..=d + 1);
}

#[tokio::test]
async fn the_queue_holds_noised_releases_once_each() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let queue = MetricQueue::open(tmp.path()).await.expect("open");
    assert_eq!(key(3600), "store-1:2:3600");
    let first = release(JAN_1, 3600, 0.04);
    let outcome = queue
        .record_release(&key(JAN_1), &first, 1.0, 1)
        .await
        .expect("record");
    assert!(
        matches!(outcome, ReleaseOutcome::Released(_)),
        "{outcome:?}"
    );
    // The same window again (a replay after a restart): nothing changes, nothing is charged.
    let again = release(JAN_1, 3600, 0.04);
    assert_eq!(
        queue
            .record_release(&key(JAN_1), &again, 1.0, 2)
            .await
            .expect("record"),
        ReleaseOutcome::AlreadyRecorded
    );
    assert!(queue.is_recorded(&key(JAN_1)).await.expect("read"));
    let second = release(JAN_1 + 3600, 3600, 0.04);
    queue
        .record_release(&key(JAN_1 + 3600), &second, 1.0, 3)
        .await
        .expect("record");

    let pending = queue.unsynced(100).await.expect("read");
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].idempotency_key, key(JAN_1));
    assert_eq!(
        pending[0].release, first,
        "the stored release is the first one"
    );
    let batch = to_batch(&pending[0]);
    assert_eq!(
        (batch.camera_id, batch.rho, batch.slots_per_frame),
        (2, 0.04, 12)
    );
    assert_eq!(batch.metrics.len(), 3);
    assert!(batch.metrics.iter().all(|m| m.noise_scale > 0.0));
    assert_eq!(queue.unsynced(1).await.expect("read").len(), 1);

    let budget = queue.day_budget(JAN_1 / DAY, 1.0).await.expect("budget");
    assert_eq!((budget.releases, budget.refused), (2, 0));
    assert!((budget.rho_spent - 0.08).abs() < 1e-12);
    assert!((budget.rho_remaining - 0.92).abs() < 1e-12);

    let synced = std::slice::from_ref(&pending[0].idempotency_key);
    assert_eq!(queue.mark_synced(synced, 10).await.expect("mark"), 1);
    assert_eq!(queue.mark_synced(synced, 11).await.expect("mark"), 0);
    assert_eq!(queue.pending_count().await.expect("count"), 1);
    queue.close().await;

    // Reopening keeps the state (and runs no migration twice).
    let queue = MetricQueue::open(tmp.path()).await.expect("reopen");
    assert_eq!(queue.unsynced(100).await.expect("read").len(), 1);
    assert_eq!(queue.stored_node_id().await.expect("read"), None);
    queue.store_node_id("store-1", 1).await.expect("store");
    queue.store_node_id("store-2", 2).await.expect("store");
    assert_eq!(
        queue.stored_node_id().await.expect("read").as_deref(),
        Some("store-2")
    );
    queue.close().await;
}

#[tokio::test]
async fn a_spent_day_refuses_releases_until_the_next_utc_day() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let queue = MetricQueue::open(tmp.path()).await.expect("open");
    let (rho, per_day) = (0.3, 1.0);
    let mut outcomes = Vec::new();
    for hour in 0..5 {
        let start = JAN_1 + hour * 3600;
        let outcome = queue
            .record_release(&key(start), &release(start, 3600, rho), per_day, hour)
            .await
            .expect("record");
        outcomes.push(outcome);
    }
    // 3 × 0.3 = 0.9 fits; a fourth would make 1.2 > 1.0.
    let released = outcomes
        .iter()
        .filter(|o| matches!(o, ReleaseOutcome::Released(_)))
        .count();
    assert_eq!(released, 3, "{outcomes:?}");
    let ReleaseOutcome::Refused(day) = &outcomes[4] else {
        panic!("the fifth window must be refused: {:?}", outcomes[4]);
    };
    assert_eq!(
        (day.releases, day.refused, day.date.as_str()),
        (3, 2, "2024-01-01")
    );
    assert!((day.rho_spent - 0.9).abs() < 1e-12 && (day.rho_remaining - 0.1).abs() < 1e-12);
    // Refused windows are never queued, and a replay of one is not counted again.
    assert_eq!(queue.unsynced(100).await.expect("read").len(), 3);
    let replay = queue
        .record_release(
            &key(JAN_1 + 3 * 3600),
            &release(JAN_1, 3600, rho),
            per_day,
            9,
        )
        .await
        .expect("record");
    assert_eq!(replay, ReleaseOutcome::AlreadyRecorded);

    // The next UTC day starts with a full budget.
    let next = JAN_1 + DAY;
    let outcome = queue
        .record_release(&key(next), &release(next, 3600, rho), per_day, 10)
        .await
        .expect("record");
    let ReleaseOutcome::Released(day) = outcome else {
        panic!("a new day must have budget: {outcome:?}");
    };
    assert_eq!(
        (day.date.as_str(), day.releases, day.refused),
        ("2024-01-02", 1, 0)
    );
    assert!((day.rho_spent - 0.3).abs() < 1e-12);

    // A window over midnight needs room on both days: 2024-01-02 has 0.7 left, 01-03 is fresh.
    let straddling = JAN_1 + 2 * DAY - 1800;
    let outcome = queue
        .record_release(
            &key(straddling),
            &release(straddling, 3600, 0.6),
            per_day,
            11,
        )
        .await
        .expect("record");
    assert!(
        matches!(outcome, ReleaseOutcome::Released(_)),
        "{outcome:?}"
    );
    let ledger = queue.ledger().await.expect("ledger");
    let spent: Vec<f64> = ledger.iter().map(|d| d.rho_spent).collect();
    assert_eq!(spent.len(), 3, "{ledger:?}");
    assert!(
        (spent[1] - 0.9).abs() < 1e-12 && (spent[2] - 0.6).abs() < 1e-12,
        "{spent:?}"
    );
    // 2024-01-03 has only 0.4 left, so a window over its end is refused although 01-04 is fresh.
    let crossing = JAN_1 + 3 * DAY - 1800;
    let outcome = queue
        .record_release(&key(crossing), &release(crossing, 3600, 0.6), per_day, 12)
        .await
        .expect("record");
    assert!(matches!(outcome, ReleaseOutcome::Refused(_)), "{outcome:?}");
    queue.close().await;

    // The ledger is readable from outside while the node owns the database.
    let days = read_ledger_of(tmp.path()).await.expect("read-only ledger");
    assert_eq!(days.len(), 4);
    assert_eq!(days[0].refused, 2);
    assert_eq!(
        (days[3].date.as_str(), days[3].rho_spent, days[3].refused),
        ("2024-01-04", 0.0, 1)
    );
}

#[tokio::test]
async fn the_database_holds_no_raw_counts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let queue = MetricQueue::open(tmp.path()).await.expect("open");
    queue
        .record_release(&key(JAN_1), &release(JAN_1, 3600, 0.04), 1.0, 1)
        .await
        .expect("record");
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT p.name FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table'",
    )
    .fetch_all(&queue.pool)
    .await
    .expect("schema");
    for raw in [
        "frames",
        "slot_observations",
        "empty_slot_observations",
        "out_of_stock_events",
    ] {
        assert!(
            !columns.iter().any(|c| c == raw),
            "raw column {raw} in {columns:?}"
        );
    }
    let stored: String = sqlx::query_scalar("SELECT metrics FROM metric_releases")
        .fetch_one(&queue.pool)
        .await
        .expect("row");
    assert!(stored.contains("noise_scale"), "{stored}");
    queue.close().await;
}
