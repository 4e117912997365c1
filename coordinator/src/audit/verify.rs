//! Walking the audit log from entry 1 and checking it against the head file; the first break
//! found is reported with what it is.

use std::fmt;
use std::path::Path;

use sqlx::Row;

use super::{Entry, GENESIS, Head, entries_after, read_head};
use crate::error::Result;
use crate::store::{Backend, to_u64};

/// Entries read per query while walking.
const PAGE: u32 = 1000;
/// How far from its place a renumbered entry is looked for (sequence numbers each way).
const RENUMBER_SEARCH: u64 = 100_000;

/// Which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// An entry's fields no longer hash to its recorded hash, or it was rewritten and rehashed
    /// (its successor names another predecessor).
    Edited,
    /// Entries are missing: a gap in the sequence, or the log ends before its head.
    Missing,
    /// An entry is out of its place: it names another stored entry as its predecessor, or its
    /// hash is that of another sequence number (renumbered).
    Reordered,
    /// The head file disagrees with the log: missing, unreadable, a different hash at its
    /// entry, or (SQLite) entries after it that nothing anchors.
    HeadMismatch,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Missing => "missing",
            BreakKind::Reordered => "reordered",
            BreakKind::HeadMismatch => "head mismatch",
        }
    }
}

/// The first place the log fails a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    pub kind: BreakKind,
    /// The entry concerned (for a missing range, its first sequence number).
    pub seq: u64,
    pub message: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entry {}: {}: {}",
            self.seq,
            self.kind.as_str(),
            self.message
        )
    }
}

/// A log that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// The newest entry's (seq, hash); `None` for an empty log.
    pub last: Option<Head>,
    /// What the head file records.
    pub head: Option<Head>,
    /// Entries after the head file's entry (PostgreSQL only: appended by other replicas,
    /// anchored by their head files, not this one).
    pub unanchored: u64,
}

/// Checks every entry in order (sequence without gaps from 1, each hash over its fields, each
/// `prev_hash` equal to the previous entry's hash), then the head file at `head_path`: the log
/// must reach its entry with the same hash, and (SQLite) end there.
pub async fn verify(
    pool: &sqlx::AnyPool,
    backend: Backend,
    head_path: &Path,
) -> Result<Result<Verified, Break>> {
    let head = match read_head(head_path) {
        Ok(head) => head,
        Err(e) => {
            return Ok(Err(Break {
                kind: BreakKind::HeadMismatch,
                seq: 0,
                message: format!("the head file cannot be used: {e}"),
            }));
        }
    };
    let mut previous: Option<Entry> = None;
    let mut at_head: Option<String> = None;
    loop {
        let page = entries_after(pool, previous.as_ref().map_or(0, |p| p.seq), PAGE).await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            if let Some(broken) = check_entry(pool, previous.as_ref(), &entry).await? {
                return Ok(Err(broken));
            }
            if head.as_ref().is_some_and(|h| h.seq == entry.seq) {
                at_head = Some(entry.hash.clone());
            }
            previous = Some(entry);
        }
    }
    let last = previous.map(|p| Head {
        seq: p.seq,
        hash: p.hash,
    });
    let last_seq = last.as_ref().map_or(0, |l| l.seq);
    let unanchored = match &head {
        None if last.is_none() => 0,
        None => {
            return Ok(Err(Break {
                kind: BreakKind::HeadMismatch,
                seq: last_seq,
                message: format!(
                    "there is no head file {}: whether the newest entries were deleted cannot be \
                     checked",
                    head_path.display()
                ),
            }));
        }
        Some(head) if head.seq > last_seq => {
            return Ok(Err(Break {
                kind: BreakKind::Missing,
                seq: last_seq + 1,
                message: format!(
                    "the log ends at entry {last_seq} but the head file records entry {} ({}): \
                     the newest {} entries were deleted",
                    head.seq,
                    head.hash,
                    head.seq - last_seq
                ),
            }));
        }
        Some(head) => {
            let found = at_head.unwrap_or_default();
            if found != head.hash {
                return Ok(Err(Break {
                    kind: BreakKind::HeadMismatch,
                    seq: head.seq,
                    message: format!(
                        "the head file records hash {} for this entry but the log's has {found}: \
                         the log was rewritten from here on",
                        head.hash
                    ),
                }));
            }
            let after = last_seq - head.seq;
            if after > 0 && backend == Backend::Sqlite {
                return Ok(Err(Break {
                    kind: BreakKind::HeadMismatch,
                    seq: head.seq + 1,
                    message: format!(
                        "{after} entries ({}..{last_seq}) come after the head file's entry {}: \
                         written outside the coordinator's append (or it stopped between a \
                         commit and its head update; its next append re-anchors them)",
                        head.seq + 1,
                        head.seq
                    ),
                }));
            }
            after
        }
    };
    Ok(Ok(Verified {
        entries: last_seq,
        last,
        head,
        unanchored,
    }))
}

/// Checks `entry` against its predecessor (`None`: it must be entry 1).
async fn check_entry(
    pool: &sqlx::AnyPool,
    previous: Option<&Entry>,
    entry: &Entry,
) -> Result<Option<Break>> {
    let seq = entry.seq;
    let expected = previous.map_or(1, |p| p.seq + 1);
    let broken = |kind, seq, message: String| Ok(Some(Break { kind, seq, message }));
    if seq != expected {
        let what = if seq == expected + 1 {
            format!("entry {expected} is")
        } else {
            format!("entries {expected}..{} are", seq - 1)
        };
        return broken(
            BreakKind::Missing,
            expected,
            format!("{what} missing (deleted): the log goes on at entry {seq}"),
        );
    }
    let intact = entry.computed_hash() == entry.hash;
    let expected_prev = previous.map_or(GENESIS, |p| p.hash.as_str());
    if entry.prev_hash != expected_prev {
        if let Some(other) = seq_with_hash(pool, &entry.prev_hash).await?
            && Some(other) != seq.checked_sub(1)
        {
            return broken(
                BreakKind::Reordered,
                seq,
                format!(
                    "it names entry {other} as its predecessor, not entry {}",
                    seq - 1
                ),
            );
        }
        if !intact {
            return Ok(Some(edited_or_renumbered(entry)));
        }
        return match previous {
            None => broken(
                BreakKind::Edited,
                seq,
                "it does not start the chain (its prev_hash is not the genesis hash)".into(),
            ),
            Some(previous) => broken(
                BreakKind::Edited,
                previous.seq,
                format!(
                    "it was rewritten and rehashed: entry {seq} names a predecessor with hash {}, \
                     not this entry's {}",
                    entry.prev_hash, previous.hash
                ),
            ),
        };
    }
    if !intact {
        return Ok(Some(edited_or_renumbered(entry)));
    }
    Ok(None)
}

/// An entry whose fields do not hash to its hash: renumbered if they do under another sequence
/// number nearby, else edited.
fn edited_or_renumbered(entry: &Entry) -> Break {
    for distance in 1..=RENUMBER_SEARCH {
        let candidates = [
            entry.seq.checked_add(distance),
            entry.seq.checked_sub(distance),
        ];
        for was in candidates.into_iter().flatten().filter(|s| *s > 0) {
            if entry.hash_as(was) == entry.hash {
                let why = if was > entry.seq {
                    "entries before it were deleted and the rest renumbered"
                } else {
                    "it was moved"
                };
                return Break {
                    kind: BreakKind::Reordered,
                    seq: entry.seq,
                    message: format!("it was entry {was}, renumbered: {why}"),
                };
            }
        }
    }
    Break {
        kind: BreakKind::Edited,
        seq: entry.seq,
        message: format!(
            "its fields (time, actor, action, subject, details, prev_hash) no longer hash to its \
             recorded hash {} ({} {} {})",
            entry.hash, entry.actor, entry.action, entry.subject
        ),
    }
}

/// The sequence number of the stored entry whose hash is `hash`, if any.
async fn seq_with_hash(pool: &sqlx::AnyPool, hash: &str) -> Result<Option<u64>> {
    let row = sqlx::query("SELECT seq FROM audit_log WHERE hash = $1 ORDER BY seq LIMIT 1")
        .bind(hash)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(row) => Some(to_u64(row.try_get("seq")?)),
        None => None,
    })
}
