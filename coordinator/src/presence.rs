//! When and how a node's presence is written to the database.
//!
//! Every heartbeat and long poll records that the node was seen (and its lineage, installed
//! version and backend), and a long poll re-records it each time it wakes. With thousands of
//! nodes that is thousands of durable writes per round for a timestamp that only has to be
//! good to within the online window, each queued behind the round's own writes. [`Presence`]
//! remembers, in memory, what was last written for each node and when: a report is *due* when
//! it says something new (another lineage, version or backend) or when the last write is older
//! than the refresh interval (a quarter of the online window, at most 5 s). Due reports wait in
//! memory and are written together, in one transaction, by the coordinator's presence flusher
//! every [`FLUSH_EVERY`] ([`crate::core::Core::flush_presence`]), except a node's first contact
//! since the coordinator started, which is written before it is answered (a store that has just
//! said hello can be sampled by the next round). So a node's `last_seen` lags
//! its last contact by at most the refresh interval plus a flush, a node that is online is
//! never taken for offline, and a report lost to a crash is sent again by the node's next
//! contact.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// What a node reported; `None` fields: not reported by this call (a timestamp only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    pub lineage: Option<String>,
    pub installed_version: Option<u64>,
    pub backend: Option<String>,
}

#[derive(Clone, Debug)]
struct Mark {
    written_ms: i64,
    reported: Reported,
}

/// The last presence written per node, and the reports waiting (see the module documentation).
#[derive(Debug)]
pub struct Presence {
    refresh_ms: i64,
    marks: Mutex<HashMap<String, Mark>>,
    pending: Mutex<HashMap<String, Pending>>,
}

/// A report waiting to be written: what was reported (fields merged over the wait) and when
/// the node was last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub reported: Reported,
    pub seen_unix_ms: i64,
}

/// How often due reports are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Longest a node's `last_seen` may lag behind its last contact.
const MAX_REFRESH: Duration = Duration::from_secs(5);

impl Presence {
    pub fn new(online_window: Duration) -> Self {
        let refresh = (online_window / 4).min(MAX_REFRESH);
        Presence {
            refresh_ms: i64::try_from(refresh.as_millis()).unwrap_or(i64::MAX),
            marks: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Whether anything was written for `node_id` since this coordinator started.
    pub fn is_known(&self, node_id: &str) -> bool {
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node_id)
    }

    /// Notes what `node_id` reported at `now_ms`; queues it for the next flush when it is due.
    pub fn report(&self, node_id: &str, reported: Reported, now_ms: i64) {
        if !self.due(node_id, &reported, now_ms) {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending
            .entry(node_id.to_owned())
            .or_insert_with(|| Pending {
                reported: Reported::default(),
                seen_unix_ms: now_ms,
            });
        entry.seen_unix_ms = entry.seen_unix_ms.max(now_ms);
        if reported.lineage.is_some() {
            entry.reported.lineage = reported.lineage;
        }
        if reported.installed_version.is_some() {
            entry.reported.installed_version = reported.installed_version;
        }
        if reported.backend.is_some() {
            entry.reported.backend = reported.backend;
        }
    }

    /// Takes every queued report (for one write); [`Presence::written`] each once it is durable.
    pub fn take_pending(&self) -> Vec<(String, Pending)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.drain().collect()
    }

    /// Whether `reported` by `node_id` at `now_ms` must be written: it changes a field, or the
    /// last write is older than the refresh interval (or there was none).
    pub fn due(&self, node_id: &str, reported: &Reported, now_ms: i64) -> bool {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mark) = marks.get(node_id) else {
            return true;
        };
        let changes = |new: &Option<String>, old: &Option<String>| {
            new.as_ref().is_some_and(|n| old.as_ref() != Some(n))
        };
        now_ms.saturating_sub(mark.written_ms) >= self.refresh_ms
            || changes(&reported.lineage, &mark.reported.lineage)
            || changes(&reported.backend, &mark.reported.backend)
            || reported
                .installed_version
                .is_some_and(|v| mark.reported.installed_version != Some(v))
    }

    /// Records that `reported` was written for `node_id` at `now_ms` (fields not reported keep
    /// their last written value).
    pub fn written(&self, node_id: &str, reported: &Reported, now_ms: i64) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let mark = marks.entry(node_id.to_owned()).or_insert_with(|| Mark {
            written_ms: now_ms,
            reported: Reported::default(),
        });
        mark.written_ms = mark.written_ms.max(now_ms);
        if reported.lineage.is_some() {
            mark.reported.lineage.clone_from(&reported.lineage);
        }
        if reported.installed_version.is_some() {
            mark.reported.installed_version = reported.installed_version;
        }
        if reported.backend.is_some() {
            mark.reported.backend.clone_from(&reported.backend);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lineage: &str, version: u64) -> Reported {
        Reported {
            lineage: Some(lineage.into()),
            installed_version: Some(version),
            backend: None,
        }
    }

    #[test]
    fn a_report_is_written_when_new_changed_or_stale_and_not_otherwise() {
        let presence = Presence::new(Duration::from_secs(60));
        let r = report("shelfnet", 3);
        assert!(presence.due("a", &r, 1_000), "never written");
        assert!(!presence.is_known("a"));
        presence.written("a", &r, 1_000);
        assert!(presence.is_known("a"));
        assert!(!presence.due("a", &r, 1_000));
        assert!(!presence.due("a", &r, 5_999), "within the 5 s refresh");
        assert!(presence.due("a", &r, 6_000), "stale");
        assert!(
            presence.due("a", &report("shelfnet", 4), 1_001),
            "new version"
        );
        assert!(presence.due("a", &report("other", 3), 1_001), "new lineage");
        let with_backend = Reported {
            backend: Some("cpu".into()),
            ..r.clone()
        };
        assert!(
            presence.due("a", &with_backend, 1_001),
            "backend never written"
        );
        presence.written("a", &with_backend, 1_001);
        // A bare timestamp (nothing reported) is due only when stale.
        assert!(!presence.due("a", &Reported::default(), 2_000));
        assert!(
            !presence.due("a", &r, 2_000),
            "backend not reported: unchanged"
        );
        assert!(presence.due("a", &Reported::default(), 6_001));
        assert!(presence.due("b", &Reported::default(), 6_001), "other node");
    }

    #[test]
    fn due_reports_wait_merged_until_taken_and_written_ones_are_not_queued_again() {
        let presence = Presence::new(Duration::from_secs(60));
        presence.report("a", report("shelfnet", 3), 1_000);
        presence.report(
            "a",
            Reported {
                backend: Some("cpu".into()),
                ..Reported::default()
            },
            1_050,
        );
        let taken = presence.take_pending();
        assert_eq!(
            taken,
            vec![(
                "a".to_owned(),
                Pending {
                    reported: Reported {
                        lineage: Some("shelfnet".into()),
                        installed_version: Some(3),
                        backend: Some("cpu".into()),
                    },
                    seen_unix_ms: 1_050,
                }
            )]
        );
        assert!(presence.take_pending().is_empty());
        presence.written("a", &taken[0].1.reported, 1_050);
        presence.report("a", report("shelfnet", 3), 2_000);
        assert!(
            presence.take_pending().is_empty(),
            "not due: nothing queued"
        );
        presence.report("a", report("shelfnet", 4), 2_000);
        assert_eq!(presence.take_pending().len(), 1, "a new version is queued");
    }

    #[test]
    fn a_short_online_window_refreshes_within_a_quarter_of_it() {
        let presence = Presence::new(Duration::from_secs(2));
        presence.written("a", &Reported::default(), 0);
        assert!(!presence.due("a", &Reported::default(), 499));
        assert!(presence.due("a", &Reported::default(), 500));
    }
}
