//! Group commit of accepted updates: the rows of updates that arrive together are recorded in
//! one write transaction, so a round of a thousand stores pays for a few dozen durable commits
//! instead of a thousand.
//!
//! Each upload queues its row and waits for its own answer. The first upload to find no commit
//! under way spawns the committer, a task that takes everything queued, records it in one
//! transaction ([`Store::insert_updates`]), answers every upload, and repeats until the queue
//! is empty. An upload is acknowledged only after its row's commit, so "durable before
//! acknowledged" holds for each update as before. The committer is a task of its own, not part
//! of any upload's future: an upload whose client goes away cannot strand the others. No lock
//! is held across an `.await`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{CoordinatorError, Result};
use crate::store::{Store, UpdateRow};

type Waiting = (UpdateRow, oneshot::Sender<Result<bool>>);

/// The queue of update rows waiting for their commit.
#[derive(Debug)]
pub struct UpdateCommits {
    store: Store,
    queue: Mutex<Vec<Waiting>>,
    committing: AtomicBool,
}

/// Most rows in one transaction.
const MAX_GROUP: usize = 512;

impl UpdateCommits {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            queue: Mutex::new(Vec::new()),
            committing: AtomicBool::new(false),
        })
    }

    /// Records `row` like [`Store::insert_update`], in a group with whatever else is waiting.
    pub async fn insert(self: &Arc<Self>, row: UpdateRow) -> Result<bool> {
        let (answer, answered) = oneshot::channel();
        self.lock().push((row, answer));
        if !self.committing.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).commit_until_empty());
        }
        answered.await.map_err(|_| {
            CoordinatorError::Internal("the update committer stopped before answering".into())
        })?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn commit_until_empty(self: Arc<Self>) {
        loop {
            let group: Vec<Waiting> = {
                let mut queue = self.lock();
                let take = queue.len().min(MAX_GROUP);
                queue.drain(..take).collect()
            };
            if group.is_empty() {
                self.committing.store(false, Ordering::Release);
                // A row queued after the queue was found empty but before the flag was cleared
                // saw a commit under way and spawned nothing: take it over, unless another
                // committer already did.
                if self.lock().is_empty() || self.committing.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let rows: Vec<UpdateRow> = group.iter().map(|(row, _)| row.clone()).collect();
            match self.store.insert_updates(&rows).await {
                Ok(inserted) => {
                    for ((_, answer), inserted) in group.into_iter().zip(inserted) {
                        let _ = answer.send(Ok(inserted));
                    }
                }
                Err(error) => {
                    tracing::warn!(updates = rows.len(), %error, "group commit of updates failed");
                    let message = error.to_string();
                    for (_, answer) in group {
                        let _ = answer.send(Err(CoordinatorError::Internal(format!(
                            "cannot record the update: {message}"
                        ))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many concurrent uploads, each answered for its own row: one per node recorded, a second
    /// from the same node not; the committer ends with the queue empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_uploads_are_each_answered_for_their_own_row() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let store = Store::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
        crate::store_conformance::training_round(&store, "r1", "shelf", &[]).await;
        let commits = UpdateCommits::new(store.clone());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let commits = Arc::clone(&commits);
            // Nodes 0..100 twice each: exactly one of each pair is recorded.
            let row = crate::store_conformance::update("r1", &format!("node-{}", i % 100), 100);
            tasks.push(tokio::spawn(async move { commits.insert(row).await }));
        }
        let mut recorded = 0;
        for task in tasks {
            let inserted = task
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            recorded += usize::from(inserted);
        }
        assert_eq!(recorded, 100);
        let stored = store.updates("r1").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored.len(), 100);
        assert!(!commits.committing.load(Ordering::Acquire));
        assert!(commits.lock().is_empty());
    }
}
