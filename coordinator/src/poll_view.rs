//! What long polls answer, read once per change and shared by every poll that change wakes.
//!
//! A poll's answer depends on the training rounds (who is sampled, who has uploaded), the
//! lineage's newest version and rollout channels, and approved frame requests. All of those
//! change only through [`Core::notify`](crate::core::Core::notify), which bumps the poll
//! generation. So one read of the database per generation serves every poll: when a
//! publication wakes a thousand polling stores, the coordinator runs three queries, not four
//! thousand. Two things can change without a new generation, and each poll checks them itself:
//!
//! - time: a round's deadline or a frame request's expiry passes (checked against the clock
//!   at each answer);
//! - an accepted update (deliberately not a poll change, so a thousand uploads do not wake a
//!   thousand polls each): this process remembers the updates it accepted since the view was
//!   read ([`PollViews::mark_uploaded`]). An update accepted by another process sharing the
//!   database is missed until the next generation; the store is then offered a round it has
//!   already done, its upload is answered `AlreadyExists`, and it paces its polls.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::store::{Channels, FrameRequestRow, PollRound};

/// One generation's view of what polls answer, for one lineage.
#[derive(Debug)]
pub struct PollView {
    /// The lineage's newest version (0: none).
    pub latest: u64,
    pub channels: Channels,
    /// Training rounds, oldest first.
    pub rounds: Vec<PollRound>,
    /// Approved frame requests that were unexpired when read, by store.
    pub exports: HashMap<String, Vec<FrameRequestRow>>,
}

type Cell = Arc<OnceCell<Arc<PollView>>>;

/// Oldest view a poll is answered from.
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// The current view (read at most once per generation and lineage) and the updates accepted
/// since.
#[derive(Debug, Default)]
pub struct PollViews {
    current: Mutex<Option<(u64, String, std::time::Instant, Cell)>>,
    uploaded_since: Mutex<HashSet<(String, String)>>,
}

impl PollViews {
    /// The cell holding generation `generation`'s view of `lineage`: the shared one if another
    /// poll asked first, else a new, empty one that replaces older generations.
    pub fn cell(&self, generation: u64, lineage: &str) -> Cell {
        let now = std::time::Instant::now();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some((g, l, read, cell))
                if *g == generation && l == lineage && now.duration_since(*read) < MAX_AGE =>
            {
                Arc::clone(cell)
            }
            // A poll that read an older generation than the cached one gets a view of its own
            // (as new as the cached one or newer), leaving the newer one cached.
            Some((g, _, _, _)) if *g > generation => Arc::new(OnceCell::new()),
            _ => {
                let cell: Cell = Arc::new(OnceCell::new());
                *current = Some((generation, lineage.to_owned(), now, Arc::clone(&cell)));
                cell
            }
        }
    }

    /// Remembers an update this process accepted, until a view read after it replaces it.
    pub fn mark_uploaded(&self, round_id: &str, node_id: &str) {
        self.uploaded_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((round_id.to_owned(), node_id.to_owned()));
    }

    /// Whether this process accepted `node_id`'s update for `round_id` (since the rounds it
    /// still trains were last read).
    pub fn was_uploaded(&self, round_id: &str, node_id: &str) -> bool {
        self.uploaded_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(round_id.to_owned(), node_id.to_owned()))
    }

    /// Forgets accepted updates of rounds no longer training: called with a view's rounds,
    /// read after the marks (a mark made while the view was read stays if its round trains).
    pub fn forget_finished(&self, training: &[PollRound]) {
        let live: HashSet<&str> = training.iter().map(|r| r.round_id.as_str()).collect();
        self.uploaded_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(round_id, _)| live.contains(round_id.as_str()));
    }
}

impl PollView {
    /// The oldest training round in which `node_id` is sampled, has not uploaded, and whose
    /// deadline is after `now_ms`.
    pub fn pending_round<'a>(
        &'a self,
        views: &PollViews,
        node_id: &str,
        now_ms: i64,
    ) -> Option<&'a PollRound> {
        self.rounds.iter().find(|r| {
            r.training_deadline_unix_ms > now_ms
                && r.sampled.contains(node_id)
                && !r.uploaded.contains(node_id)
                && !views.was_uploaded(&r.round_id, node_id)
        })
    }

    /// `store_id`'s approved frame requests still unexpired at `now_ms`.
    pub fn exports_for(&self, store_id: &str, now_ms: i64) -> Vec<&FrameRequestRow> {
        self.exports
            .get(store_id)
            .map(|rows| rows.iter().filter(|r| r.expires_unix_ms > now_ms).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(id: &str, deadline: i64, sampled: &[&str], uploaded: &[&str]) -> PollRound {
        PollRound {
            round_id: id.into(),
            created_unix_ms: 0,
            training_deadline_unix_ms: deadline,
            sampled: sampled.iter().map(|s| (*s).to_owned()).collect(),
            uploaded: uploaded.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn view(rounds: Vec<PollRound>) -> PollView {
        PollView {
            latest: 1,
            channels: Channels::default(),
            rounds,
            exports: HashMap::new(),
        }
    }

    #[test]
    fn a_round_is_pending_for_sampled_nodes_that_have_not_uploaded_before_its_deadline() {
        let views = PollViews::default();
        let v = view(vec![
            round("r1", 1_000, &["a", "b"], &["b"]),
            round("r2", 5_000, &["a", "c"], &[]),
        ]);
        let id = |r: Option<&PollRound>| r.map(|r| r.round_id.clone());
        assert_eq!(id(v.pending_round(&views, "a", 500)), Some("r1".into()));
        assert_eq!(id(v.pending_round(&views, "b", 500)), None);
        assert_eq!(id(v.pending_round(&views, "c", 500)), Some("r2".into()));
        assert_eq!(id(v.pending_round(&views, "z", 500)), None);
        // r1's deadline passed: r2 is next for a.
        assert_eq!(id(v.pending_round(&views, "a", 1_000)), Some("r2".into()));
        // An update accepted after the view was read.
        views.mark_uploaded("r2", "c");
        assert_eq!(id(v.pending_round(&views, "c", 500)), None);
        // Forgotten once r2 no longer trains; kept while it does.
        views.forget_finished(&[round("r2", 5_000, &["a", "c"], &[])]);
        assert!(views.was_uploaded("r2", "c"));
        views.forget_finished(&[]);
        assert!(!views.was_uploaded("r2", "c"));
    }

    #[test]
    fn one_cell_per_generation_and_lineage() {
        let views = PollViews::default();
        let a = views.cell(3, "shelfnet");
        let b = views.cell(3, "shelfnet");
        assert!(
            Arc::ptr_eq(&a, &b),
            "polls of one generation share the view"
        );
        let newer = views.cell(4, "shelfnet");
        assert!(!Arc::ptr_eq(&a, &newer));
        // An older generation does not evict the newer view.
        let older = views.cell(3, "shelfnet");
        assert!(!Arc::ptr_eq(&older, &newer));
        assert!(Arc::ptr_eq(&views.cell(4, "shelfnet"), &newer));
        let other = views.cell(4, "other");
        assert!(!Arc::ptr_eq(&other, &newer));
        // Too old to share: read again.
        let first = views.cell(5, "shelfnet");
        std::thread::sleep(MAX_AGE + std::time::Duration::from_millis(10));
        assert!(!Arc::ptr_eq(&first, &views.cell(5, "shelfnet")));
    }
}
