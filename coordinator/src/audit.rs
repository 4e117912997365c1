//! The audit log: an append-only, hash-chained record of who did what to the federation —
//! enrolments, signing-key changes, rounds started, cancelled, failed and published, model
//! promotions and rollbacks, metric queries, and every step of a frame request.
//!
//! Entry `seq` (1, 2, 3, … without gaps) holds its time, actor (`role/name` from the client
//! certificate, `cli/<user>` for the offline tools, [`DAEMON`] for the coordinator itself),
//! action, subject, details (canonical JSON), `prev_hash` (the previous entry's hash; [`GENESIS`]
//! for entry 1) and `hash`, SHA-256 over all of these ([`hash_fields`]). An edited entry no longer
//! hashes to its hash; an edited and rehashed one no longer matches its successor's `prev_hash`;
//! a deleted one leaves a gap (or, renumbered over, changes the hashes after it). Deleting the
//! *last* entries leaves a valid shorter chain, so every append also writes the new (seq, hash)
//! to `<data_dir>/audit.head` (temporary file, fsync, rename), outside the database: a log that
//! ends before its head, or differs from it there, was cut. [`verify`] checks all of it.
//!
//! Appends are serialised so the chain never forks: in this process by a mutex, between
//! processes on this machine (the daemon and `backroom enroll`, `keys`) by a lock on
//! `<data_dir>/audit.lock`, and in the database by [`Store::begin_write`] (SQLite's
//! `BEGIN IMMEDIATE`, PostgreSQL's advisory lock, which replicas share). An entry is appended
//! right after the action it records succeeds, except for reads that disclose data (metric
//! queries, frame downloads), which are appended first and refused if the append fails.
//!
//! What it cannot do: nothing here is secret, so whoever can write both the database and the
//! head file can rewrite history consistently. The head file raises the bar from "SQL access"
//! to "SQL and file-system access on the coordinator's machine"; keeping a copy of the head hash
//! elsewhere (it is printed by `backroom audit verify`) catches even that.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tracing::error;

use crate::core::Core;
use crate::error::{CoordinatorError, Result};
use crate::identity::Peer;
use crate::registry::now_unix_ms;
use crate::store::{Backend, Store, to_i64, to_u64};

pub mod hooks;
mod verify;
pub use verify::{Break, BreakKind, Verified, verify};

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
mod tests;

/// The head file in the coordinator's data directory: `<seq> <hash>` of the newest entry.
pub const HEAD_FILE: &str = "audit.head";
/// Locked (never removed) while an entry is appended, so appenders on one machine take turns.
pub const LOCK_FILE: &str = "audit.lock";
/// Entries queued by offline tools for the coordinator to append ([`queue_offline`]).
pub const PENDING_FILE: &str = "audit.pending";
/// `prev_hash` of entry 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The actor of entries the coordinator makes on its own (round publications and failures,
/// expiries, deliveries it records).
pub const DAEMON: &str = "coordinator";
/// Domain separation of the entry hash (and its version).
const HASH_DOMAIN: &[u8] = b"backroom-audit-v1\0";

/// `role/name` of a certificate holder: `admin/alice`, `ml-engineer/bob`, `node/store-1`.
pub fn actor(peer: &Peer) -> String {
    format!("{}/{}", peer.role, peer.name)
}

/// One entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub time_unix_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// Canonical JSON ([`canonical_json`]): the exact text that is hashed.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Entry {
    /// The hash the entry's fields give (equal to `hash` unless it was tampered with).
    pub fn computed_hash(&self) -> String {
        self.hash_as(self.seq)
    }

    /// The hash the entry's fields would give if its sequence number were `seq`.
    pub(crate) fn hash_as(&self, seq: u64) -> String {
        hash_fields(
            seq,
            self.time_unix_ms,
            &self.actor,
            &self.action,
            &self.subject,
            &self.details,
            &self.prev_hash,
        )
    }

    /// The details as JSON (`null` if the stored text is not JSON).
    pub fn details_json(&self) -> Value {
        serde_json::from_str(&self.details).unwrap_or(Value::Null)
    }
}

/// SHA-256 (lowercase hex) over the domain tag, `seq` and `time` as 8-byte big-endian integers,
/// and each text field preceded by its length (8-byte big-endian), so no two different entries
/// encode alike.
pub fn hash_fields(
    seq: u64,
    time_unix_ms: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
    prev_hash: &str,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(HASH_DOMAIN);
    hasher.update(seq.to_be_bytes());
    hasher.update(time_unix_ms.to_be_bytes());
    for field in [actor, action, subject, details, prev_hash] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// JSON with object keys sorted (recursively) and no whitespace: one text per value, whatever
/// order its keys were built in.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// What the head file records: the newest entry this machine appended or saw anchored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    fn to_text(&self) -> String {
        format!("{} {}\n", self.seq, self.hash)
    }

    fn parse(text: &str) -> Option<Self> {
        let (seq, hash) = text.trim().split_once(' ')?;
        let hash = hash.trim();
        let hex_ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        Some(Self {
            seq: seq.parse().ok()?,
            hash: hex_ok.then(|| hash.to_owned())?,
        })
    }
}

/// The head file at `path`: `None` if there is none, an error if it cannot be read or parsed.
pub fn read_head(path: &Path) -> Result<Option<Head>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Head::parse(&text).map(Some).ok_or_else(|| {
            CoordinatorError::Internal(format!(
                "{} is not an audit head (expected \"<seq> <sha-256 hex>\")",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoordinatorError::io(
            format!("cannot read {}", path.display()),
            e,
        )),
    }
}

/// Appends to one database's audit log and keeps the head file in `data_dir` up to date.
#[derive(Debug)]
pub struct AuditLog {
    store: Store,
    data_dir: PathBuf,
    /// Appends of this process, one at a time (then the file lock, for other processes).
    local: tokio::sync::Mutex<()>,
}

impl AuditLog {
    pub fn new(store: Store, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            store,
            data_dir: data_dir.into(),
            local: tokio::sync::Mutex::new(()),
        }
    }

    pub fn head_path(&self) -> PathBuf {
        self.data_dir.join(HEAD_FILE)
    }

    /// Appends an entry and returns it, durable in the database and anchored in the head file.
    ///
    /// Entries queued by offline tools ([`queue_offline`]) are appended first. The head moves
    /// only from an entry the log still holds, unchanged, through entries that chain from it: if
    /// the log was cut or rewritten since, the head is left as it is (the evidence `verify`
    /// reports) and this is logged as an error; the entry is still appended. A missing head is
    /// created on the first entry, and on PostgreSQL (a replica with a data directory of its
    /// own), never over an existing SQLite log (someone removed it).
    pub async fn append(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        details: &Value,
    ) -> Result<Entry> {
        let entry = Pending {
            time_unix_ms: now_unix_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            details: details.clone(),
        };
        self.write(Some(entry))
            .await?
            .pop()
            .ok_or_else(|| CoordinatorError::Internal("the audit log append wrote nothing".into()))
    }

    /// What the coordinator does when it starts: appends entries queued by offline tools, moves
    /// a head that is behind over entries that chain from it (a stop between a commit and its
    /// head update, or other replicas' appends), and logs an error, leaving the head as
    /// evidence, if the log no longer holds the head's entry unchanged.
    pub async fn check_head(&self) -> Result<()> {
        self.write(None).await.map(|_| ())
    }

    /// Appends the queued entries and `new` in one transaction, then moves the head if it is
    /// anchored in the log; returns the entries written, `new`'s last.
    async fn write(&self, new: Option<Pending>) -> Result<Vec<Entry>> {
        let _local = self.local.lock().await;
        let lock_path = self.data_dir.join(LOCK_FILE);
        let head_path = self.head_path();
        let pending_path = self.data_dir.join(PENDING_FILE);
        let (_file_lock, head, queued) = tokio::task::spawn_blocking(move || {
            let lock = lock_file(&lock_path)?;
            Ok::<_, CoordinatorError>((lock, read_head(&head_path), read_pending(&pending_path)))
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("audit lock task failed: {e}")))??;
        let queued = queued.unwrap_or_else(|e| {
            error!(error = %e, "queued audit entries cannot be read; left in place");
            Vec::new()
        });
        let imported = !queued.is_empty();

        let mut tx = self.store.begin_write().await?;
        let mut last = last_entry(&mut tx).await?;
        let anchored = match (&head, &last) {
            (Ok(Some(head)), _) => chains_from(&mut tx, head, last.as_ref()).await?,
            (Ok(None), None) => true,
            (Ok(None), Some(_)) => self.store.backend() == Backend::Postgres,
            (Err(_), _) => false,
        };
        let mut written = Vec::new();
        for item in queued.into_iter().chain(new) {
            let entry = item.into_entry(last.as_ref());
            insert(&mut tx, &entry).await?;
            last = Some((entry.seq, entry.hash.clone()));
            written.push(entry);
        }
        tx.commit().await?;

        if imported {
            let pending_path = self.data_dir.join(PENDING_FILE);
            tokio::task::spawn_blocking(move || remove_durably(&pending_path))
                .await
                .map_err(|e| {
                    CoordinatorError::Internal(format!("audit queue task failed: {e}"))
                })??;
        }
        let current = head.as_ref().ok().and_then(Option::as_ref);
        match (&last, anchored) {
            (Some((seq, hash)), true)
                if current.is_none_or(|h| h.seq != *seq || h.hash != *hash) =>
            {
                let text = Head {
                    seq: *seq,
                    hash: hash.clone(),
                }
                .to_text();
                let head_path = self.head_path();
                tokio::task::spawn_blocking(move || {
                    crate::registry::write_durably(&head_path, text.as_bytes())
                })
                .await
                .map_err(|e| {
                    CoordinatorError::Internal(format!("audit head task failed: {e}"))
                })??;
            }
            (Some(_), false) => {
                let found = match &head {
                    Ok(Some(head)) => format!("it names entry {} {}", head.seq, head.hash),
                    Ok(None) => "it is missing".to_owned(),
                    Err(e) => e.to_string(),
                };
                error!(
                    head = %self.head_path().display(),
                    "the audit log does not match its head file ({found}): entries were deleted \
                     or rewritten; the head is left as evidence; run `backroom audit verify`"
                );
            }
            _ => {}
        }
        Ok(written)
    }

    /// Waits for an append in progress (its head update included) to finish.
    pub async fn wait_idle(&self) {
        drop(self.local.lock().await);
    }

    /// Entries with `seq > after`, oldest first, at most `limit`.
    pub async fn entries_after(&self, after: u64, limit: u32) -> Result<Vec<Entry>> {
        entries_after(&self.store.pool, after, limit).await
    }

    /// Walks the whole chain and checks it against the head file ([`verify`]).
    pub async fn verify(&self) -> Result<Result<Verified, Break>> {
        verify(&self.store.pool, self.store.backend(), &self.head_path()).await
    }
}

/// The newest entry's (seq, hash).
async fn last_entry(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
) -> Result<Option<(u64, String)>> {
    sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| -> Result<(u64, String)> {
            Ok((to_u64(row.try_get("seq")?), row.try_get("hash")?))
        })
        .transpose()
}

/// Whether the entry `head` names is in the log unchanged and every entry after it, up to
/// `last`, follows from it (links and hashes).
async fn chains_from(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    head: &Head,
    last: Option<&(u64, String)>,
) -> Result<bool> {
    match last {
        None => return Ok(false),
        Some((seq, hash)) if *seq == head.seq => return Ok(*hash == head.hash),
        Some((seq, _)) if *seq < head.seq => return Ok(false),
        Some(_) => {}
    }
    let rows = sqlx::query("SELECT * FROM audit_log WHERE seq >= $1 AND seq <= $2 ORDER BY seq")
        .bind(to_i64(head.seq))
        .bind(to_i64(last.map_or(0, |(seq, _)| *seq)))
        .fetch_all(&mut **tx)
        .await?;
    let mut previous: Option<Entry> = None;
    for row in &rows {
        let entry = entry_from_row(row)?;
        let fits = match &previous {
            None => entry.seq == head.seq && entry.hash == head.hash,
            Some(previous) => entry.seq == previous.seq + 1 && entry.prev_hash == previous.hash,
        };
        if !fits || entry.computed_hash() != entry.hash {
            return Ok(false);
        }
        previous = Some(entry);
    }
    Ok(previous.is_some_and(|p| Some(p.seq) == last.map(|(seq, _)| *seq)))
}

/// An entry not yet in the log: queued by an offline tool, or being appended.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Pending {
    time_unix_ms: i64,
    actor: String,
    action: String,
    subject: String,
    details: Value,
}

impl Pending {
    /// The entry after `last` (`None`: the first).
    fn into_entry(self, last: Option<&(u64, String)>) -> Entry {
        let (seq, prev_hash) = match last {
            Some((seq, hash)) => (seq + 1, hash.clone()),
            None => (1, GENESIS.to_owned()),
        };
        let details = canonical_json(&self.details);
        Entry {
            hash: hash_fields(
                seq,
                self.time_unix_ms,
                &self.actor,
                &self.action,
                &self.subject,
                &details,
                &prev_hash,
            ),
            seq,
            time_unix_ms: self.time_unix_ms,
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            details,
            prev_hash,
        }
    }
}

async fn insert(tx: &mut sqlx::Transaction<'static, sqlx::Any>, entry: &Entry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (seq, time_unix_ms, actor, action, subject, details, prev_hash, \
         hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(to_i64(entry.seq))
    .bind(entry.time_unix_ms)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.subject)
    .bind(&entry.details)
    .bind(&entry.prev_hash)
    .bind(&entry.hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The entries queued in `path` (one JSON object a line), none if there is no file.
fn read_pending(path: &Path) -> Result<Vec<Pending>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CoordinatorError::io(
                format!("cannot read {}", path.display()),
                e,
            ));
        }
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|e| {
                CoordinatorError::Internal(format!("{}: not a queued entry: {e}", path.display()))
            })
        })
        .collect()
}

fn remove_durably(path: &Path) -> Result<()> {
    std::fs::remove_file(path)
        .map_err(|e| CoordinatorError::io(format!("cannot remove {}", path.display()), e))?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Queues an entry in `<data_dir>/audit.pending` for the coordinator of `data_dir` to append
/// with its next entry (or when it starts): what an offline tool does when the coordinator's
/// database is not at hand (not yet created, or PostgreSQL without its configuration). The
/// entry keeps its own time; the file is fsynced before this returns.
pub async fn queue_offline(
    data_dir: &Path,
    actor: &str,
    action: &str,
    subject: &str,
    details: &Value,
) -> Result<()> {
    let pending = Pending {
        time_unix_ms: now_unix_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        details: details.clone(),
    };
    let mut line = serde_json::to_string(&pending)
        .map_err(|e| CoordinatorError::Internal(format!("queued entry: {e}")))?;
    line.push('\n');
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let _lock = lock_file(&data_dir.join(LOCK_FILE))?;
        let path = data_dir.join(PENDING_FILE);
        let created = !path.exists();
        let context = |what: &str| format!("cannot {what} {}", path.display());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| CoordinatorError::io(context("open"), e))?;
        file.write_all(line.as_bytes())
            .map_err(|e| CoordinatorError::io(context("write"), e))?;
        file.sync_all()
            .map_err(|e| CoordinatorError::io(context("sync"), e))?;
        if created && let Ok(dir) = std::fs::File::open(&data_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })
    .await
    .map_err(|e| CoordinatorError::Internal(format!("audit queue task failed: {e}")))?
}

/// Takes the exclusive lock on `path` (created if missing), released when the file is dropped.
/// `backroom audit verify` holds `<data_dir>/audit.lock` for its walk, so a running coordinator
/// on the same machine cannot append between its reading of the head and of the log.
pub fn lock_file(path: &Path) -> Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CoordinatorError::io(format!("cannot create {}", parent.display()), e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| CoordinatorError::io(format!("cannot open {}", path.display()), e))?;
    file.lock()
        .map_err(|e| CoordinatorError::io(format!("cannot lock {}", path.display()), e))?;
    Ok(file)
}

pub(crate) fn entry_from_row(row: &sqlx::any::AnyRow) -> Result<Entry> {
    Ok(Entry {
        seq: to_u64(row.try_get("seq")?),
        time_unix_ms: row.try_get("time_unix_ms")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        subject: row.try_get("subject")?,
        details: row.try_get("details")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Entries with `seq > after`, oldest first, at most `limit`.
pub async fn entries_after(pool: &sqlx::AnyPool, after: u64, limit: u32) -> Result<Vec<Entry>> {
    let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter().map(entry_from_row).collect()
}

/// The newest `count` entries, oldest first.
pub async fn newest_entries(pool: &sqlx::AnyPool, count: u32) -> Result<Vec<Entry>> {
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq DESC LIMIT $1")
        .bind(i64::from(count))
        .fetch_all(pool)
        .await?;
    let mut entries = rows
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>>>()?;
    entries.reverse();
    Ok(entries)
}

/// Opens a coordinator database to read its audit log (`backroom audit verify`, `list`): no
/// migrations run and nothing is written; a SQLite file must exist.
pub async fn open_for_reading(database_url: &str) -> Result<(sqlx::AnyPool, Backend)> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(database_url)?;
    let url = match backend {
        Backend::Sqlite if !database_url.contains("mode=") => {
            let separator = if database_url.contains('?') { '&' } else { '?' };
            format!("{database_url}{separator}mode=ro")
        }
        _ => database_url.to_owned(),
    };
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let exists = match backend {
        Backend::Sqlite => sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'",
        )
        .fetch_optional(&pool)
        .await?
        .is_some(),
        Backend::Postgres => sqlx::query("SELECT to_regclass('audit_log')::text AS name")
            .fetch_one(&pool)
            .await?
            .try_get::<Option<String>, _>("name")?
            .is_some(),
    };
    if !exists {
        return Err(CoordinatorError::NotFound(format!(
            "{} has no audit_log table: it predates the audit log (migration 0009); start the \
             coordinator once to add it",
            crate::store::redact_url(database_url)
        )));
    }
    Ok((pool, backend))
}

/// Appends one entry from outside the daemon (`backroom enroll`, `backroom keys`, the
/// sandbox): opens the database of `config` (running its migrations, as the daemon would),
/// appends under the same locks as the daemon, and closes it.
pub async fn append_offline(
    config: &crate::CoordinatorConfig,
    actor: &str,
    action: &str,
    subject: &str,
    details: &Value,
) -> Result<Entry> {
    let store = Store::open(&config.database_url).await?;
    let log = AuditLog::new(store.clone(), &config.data_dir);
    let appended = log.append(actor, action, subject, details).await;
    store.pool.close().await;
    store.writer.close().await;
    appended
}

/// SHA-256 (hex) of the DER certificate in a PEM file: how enrolments name what they issued.
pub fn certificate_fingerprint(pem_path: &Path) -> Option<String> {
    let pem = std::fs::read(pem_path).ok()?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    Some(hex::encode(Sha256::digest(&parsed.contents)))
}

impl Core {
    /// Appends an entry to the audit log: `actor` is `role/name` ([`actor`] of the caller's
    /// certificate) or [`DAEMON`]; `action` a dotted name (`metrics.query`); `subject` what it
    /// acted on (a round id, `lineage/version`, a request id); `details` any JSON (stored
    /// canonically). Call it before serving data a read discloses (and refuse on error), or
    /// right after a change succeeds.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        details: Value,
    ) -> Result<()> {
        self.audit_log
            .append(actor, action, subject, &details)
            .await
            .map(|_| ())
    }

    /// [`Core::audit`] for a change that has already happened: a failure to record it is
    /// logged as an error, not returned (the caller's change stands either way, and retrying it
    /// would repeat it).
    pub async fn audit_done(&self, actor: &str, action: &str, subject: &str, details: Value) {
        if let Err(e) = self.audit(actor, action, subject, details).await {
            error!(actor, action, subject, error = %e, "cannot append to the audit log");
        }
    }
}

/// Details of a published version, as entries about publications carry them.
pub fn version_details(row: &crate::store::VersionRow) -> Value {
    serde_json::json!({
        "lineage": row.lineage,
        "version": row.version,
        "parent_version": row.parent_version,
        "round_id": row.round_id,
        "weights_sha256": row.weights_sha256,
    })
}

/// Records the lineage's first version, published by the coordinator when it starts.
pub async fn record_initial_version(core: &Core, row: &crate::store::VersionRow) {
    core.audit_done(
        DAEMON,
        "model.publish",
        &format!("{}/{}", row.lineage, row.version),
        version_details(row),
    )
    .await;
}
