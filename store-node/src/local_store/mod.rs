//! The encrypted local store: what the node keeps of its (redacted) frames, and its deletion
//! log.
//!
//! Every processed frame leaves an **event** (its slot states and how many regions redaction
//! filled) in the `frames` table of `node.db`; some frames also keep their redacted **image**
//! (one per `keep_image_every` of capture time per camera) as a file under
//! `<data_dir>/frames/<camera>/`. Events and images are sealed with the node's key
//! ([`vault`]); only the camera id and the capture and storage times stay in the clear, so
//! that retention, deletion requests and data requests can find rows without the key.
//!
//! - Retention ([`LocalStore::prune`]): rows and images stored longer ago than the window are
//!   deleted; a sweep that deleted something is recorded in `deletions`.
//! - Deletion requests ([`LocalStore::delete_matching`]): a capture-time window (and optionally
//!   a camera) is deleted at once, and the request is recorded whether or not it matched.
//!
//! **Architecture Invariant:** only [`RedactedFrame`]s can be stored (the type has no way in
//! for a raw frame), and nothing is written to disk unsealed: images are encoded, sealed and
//! written to a temporary file that is renamed into place (never a partial file); the database
//! runs with `secure_delete`, so deleted rows are overwritten.

pub mod vault;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use image::{DynamicImage, ImageFormat, RgbImage};
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

use crate::frames::RedactedFrame;
pub use vault::{Vault, VaultError};

/// JPEG quality of kept frame images.
const IMAGE_QUALITY: u8 = 90;

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("local database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot delete {}: {source}", .path.display())]
    Delete {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode or decode a stored image: {0}")]
    Image(#[from] image::ImageError),
    #[error("stored event {id} is unreadable: {source}")]
    Event {
        id: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("a local store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What the node derived from one frame (sealed in the `frames` row).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameEvent {
    /// One state per slot (see [`crate::camera::SLOT_EMPTY`]; [`crate::camera::SLOT_OCCLUDED`]
    /// where redaction filled the slot's cell).
    pub slot_states: Vec<u8>,
    /// Regions redaction filled in the frame.
    pub faces_redacted: u32,
}

/// A stored frame's row, without opening anything sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFrame {
    pub id: i64,
    pub camera_id: u32,
    pub captured_unix_ms: i64,
    pub stored_unix_ms: i64,
    /// Relative to the store's frame directory, when the image was kept.
    pub image_file: Option<String>,
}

/// A request to delete every artefact of a capture-time window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletionRequest {
    /// `None`: every camera.
    pub camera_id: Option<u32>,
    pub from_unix_ms: i64,
    /// Exclusive.
    pub to_unix_ms: i64,
    pub requested_by: String,
    pub reason: String,
}

/// One line of the deletion log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeletionRecord {
    pub id: i64,
    /// `"retention"` or `"request"`.
    pub kind: String,
    pub requested_by: String,
    pub reason: String,
    pub camera_id: Option<u32>,
    pub from_unix_ms: i64,
    pub to_unix_ms: i64,
    pub frames_deleted: u64,
    pub images_deleted: u64,
    pub done_unix_ms: i64,
}

/// The local store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalStore {
    pool: SqlitePool,
    frame_dir: PathBuf,
    vault: Arc<Vault>,
}

fn event_aad(camera_id: u32, captured_unix_ms: i64) -> Vec<u8> {
    format!("frame-event:{camera_id}:{captured_unix_ms}").into_bytes()
}

fn image_aad(camera_id: u32, captured_unix_ms: i64, file: &str) -> Vec<u8> {
    format!("frame-image:{camera_id}:{captured_unix_ms}:{file}").into_bytes()
}

impl LocalStore {
    /// The store over an open `node.db` (migrated by [`crate::metrics_sync::MetricQueue`]),
    /// keeping images under `<data_dir>/frames`.
    pub fn new(pool: SqlitePool, data_dir: &Path, vault: Arc<Vault>) -> Self {
        Self {
            pool,
            frame_dir: data_dir.join("frames"),
            vault,
        }
    }

    pub fn frame_dir(&self) -> &Path {
        &self.frame_dir
    }

    /// Records a processed frame: its event always, its image when `keep_image`. If the image
    /// cannot be written (a full disk, say) the event is still kept and the error returned.
    pub async fn record(
        &self,
        frame: &RedactedFrame,
        slot_states: &[u8],
        keep_image: bool,
        now_unix_ms: i64,
    ) -> Result<StoredFrame, StoreError> {
        let event = FrameEvent {
            slot_states: slot_states.to_vec(),
            faces_redacted: u32::try_from(frame.regions.len()).unwrap_or(u32::MAX),
        };
        let (camera_id, captured) = (frame.camera_id, frame.captured_unix_ms);
        let plain =
            serde_json::to_vec(&event).map_err(|source| StoreError::Event { id: 0, source })?;
        let sealed = self.vault.seal(&event_aad(camera_id, captured), &plain)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO frames (camera_id, captured_unix_ms, stored_unix_ms, event) \
             VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(i64::from(camera_id))
        .bind(captured)
        .bind(now_unix_ms)
        .bind(sealed)
        .fetch_one(&self.pool)
        .await?;
        let mut stored = StoredFrame {
            id,
            camera_id,
            captured_unix_ms: captured,
            stored_unix_ms: now_unix_ms,
            image_file: None,
        };
        if !keep_image {
            return Ok(stored);
        }
        let file = format!("{camera_id}/{captured}-{id}.bkf");
        let (dir, vault, image) = (
            self.frame_dir.clone(),
            self.vault.clone(),
            frame.image.clone(),
        );
        let name = file.clone();
        tokio::task::spawn_blocking(move || {
            write_image(&dir, &name, &vault, camera_id, captured, image)
        })
        .await??;
        sqlx::query("UPDATE frames SET image_file = ? WHERE id = ?")
            .bind(&file)
            .bind(id)
            .execute(&self.pool)
            .await?;
        stored.image_file = Some(file);
        Ok(stored)
    }

    /// Rows captured in `[from, to)`, optionally of one camera, oldest first.
    pub async fn frames_between(
        &self,
        camera_id: Option<u32>,
        from_unix_ms: i64,
        to_unix_ms: i64,
    ) -> Result<Vec<StoredFrame>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, camera_id, captured_unix_ms, stored_unix_ms, image_file FROM frames \
             WHERE captured_unix_ms >= ? AND captured_unix_ms < ? AND (? IS NULL OR camera_id = ?) \
             ORDER BY captured_unix_ms, id",
        )
        .bind(from_unix_ms)
        .bind(to_unix_ms)
        .bind(camera_id.map(i64::from))
        .bind(camera_id.map(i64::from))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_frame).collect()
    }

    /// Number of rows and of kept images.
    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n, COUNT(image_file) AS images FROM frames")
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        let images: i64 = row.try_get("images")?;
        Ok((n.max(0) as u64, images.max(0) as u64))
    }

    /// Opens a stored frame's event.
    pub async fn event(&self, frame: &StoredFrame) -> Result<FrameEvent, StoreError> {
        let sealed: Vec<u8> = sqlx::query_scalar("SELECT event FROM frames WHERE id = ?")
            .bind(frame.id)
            .fetch_one(&self.pool)
            .await?;
        let aad = event_aad(frame.camera_id, frame.captured_unix_ms);
        let plain = self.vault.open_sealed(&aad, &sealed)?;
        serde_json::from_slice(&plain).map_err(|source| StoreError::Event {
            id: frame.id,
            source,
        })
    }

    /// Opens a stored frame's image (`None` when none was kept).
    pub async fn image(&self, frame: &StoredFrame) -> Result<Option<RgbImage>, StoreError> {
        let Some(file) = frame.image_file.clone() else {
            return Ok(None);
        };
        let (dir, vault) = (self.frame_dir.clone(), self.vault.clone());
        let (camera_id, captured) = (frame.camera_id, frame.captured_unix_ms);
        let image = tokio::task::spawn_blocking(move || {
            read_image(&dir, &file, &vault, camera_id, captured)
        })
        .await??;
        Ok(Some(image))
    }

    /// A stored frame's image as the JPEG bytes it was kept as (`None` when none was kept).
    pub async fn image_jpeg(&self, frame: &StoredFrame) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(file) = frame.image_file.clone() else {
            return Ok(None);
        };
        let (dir, vault) = (self.frame_dir.clone(), self.vault.clone());
        let (camera_id, captured) = (frame.camera_id, frame.captured_unix_ms);
        let jpeg = tokio::task::spawn_blocking(move || {
            open_image_file(&dir, &file, &vault, camera_id, captured)
        })
        .await??;
        Ok(Some(jpeg))
    }

    /// Deletes everything stored before `now − retention` (storage time); records the sweep
    /// when it deleted something. Returns the record.
    pub async fn prune(
        &self,
        retention: Duration,
        now_unix_ms: i64,
    ) -> Result<Option<DeletionRecord>, StoreError> {
        let window = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_unix_ms.saturating_sub(window);
        let rows = sqlx::query(
            "SELECT id, camera_id, captured_unix_ms, stored_unix_ms, image_file FROM frames \
             WHERE stored_unix_ms < ? ORDER BY id",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        let victims: Vec<StoredFrame> = rows.iter().map(stored_frame).collect::<Result<_, _>>()?;
        if victims.is_empty() {
            return Ok(None);
        }
        let from = victims
            .iter()
            .map(|f| f.stored_unix_ms)
            .min()
            .unwrap_or(cutoff);
        let scope = Scope {
            kind: "retention",
            requested_by: "retention".to_owned(),
            reason: format!("older than the retention window ({}s)", retention.as_secs()),
            camera_id: None,
            from_unix_ms: from,
            to_unix_ms: cutoff,
        };
        self.delete(victims, scope, now_unix_ms).await.map(Some)
    }

    /// Carries out a deletion request and records it (also when nothing matched).
    pub async fn delete_matching(
        &self,
        request: &DeletionRequest,
        now_unix_ms: i64,
    ) -> Result<DeletionRecord, StoreError> {
        let victims = self
            .frames_between(request.camera_id, request.from_unix_ms, request.to_unix_ms)
            .await?;
        let scope = Scope {
            kind: "request",
            requested_by: request.requested_by.clone(),
            reason: request.reason.clone(),
            camera_id: request.camera_id,
            from_unix_ms: request.from_unix_ms,
            to_unix_ms: request.to_unix_ms,
        };
        self.delete(victims, scope, now_unix_ms).await
    }

    /// The deletion log, oldest first.
    pub async fn deletions(&self) -> Result<Vec<DeletionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, requested_by, reason, camera_id, from_unix_ms, to_unix_ms, \
             frames_deleted, images_deleted, done_unix_ms FROM deletions ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeletionRecord {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    requested_by: row.try_get("requested_by")?,
                    reason: row.try_get("reason")?,
                    camera_id: row
                        .try_get::<Option<i64>, _>("camera_id")?
                        .and_then(|c| u32::try_from(c).ok()),
                    from_unix_ms: row.try_get("from_unix_ms")?,
                    to_unix_ms: row.try_get("to_unix_ms")?,
                    frames_deleted: row.try_get::<i64, _>("frames_deleted")?.max(0) as u64,
                    images_deleted: row.try_get::<i64, _>("images_deleted")?.max(0) as u64,
                    done_unix_ms: row.try_get("done_unix_ms")?,
                })
            })
            .collect()
    }

    /// Deletes the images (a missing file counts as deleted), then the rows, then records it.
    /// A crash in between leaves rows whose image is gone, which the next sweep or request
    /// deletes again: nothing is ever left unrecorded on disk.
    async fn delete(
        &self,
        victims: Vec<StoredFrame>,
        scope: Scope,
        now_unix_ms: i64,
    ) -> Result<DeletionRecord, StoreError> {
        let files: Vec<String> = victims
            .iter()
            .filter_map(|f| f.image_file.clone())
            .collect();
        let dir = self.frame_dir.clone();
        let images_deleted = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            let mut deleted = 0;
            for file in files {
                let path = dir.join(&file);
                match std::fs::remove_file(&path) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted += 1,
                    Err(source) => return Err(StoreError::Delete { path, source }),
                }
            }
            Ok(deleted)
        })
        .await??;
        let mut tx = self.pool.begin().await?;
        for chunk in victims.chunks(500) {
            let mut query = sqlx::QueryBuilder::new("DELETE FROM frames WHERE id IN (");
            let mut ids = query.separated(", ");
            for frame in chunk {
                ids.push_bind(frame.id);
            }
            query.push(")");
            query.build().execute(&mut *tx).await?;
        }
        let frames_deleted = victims.len() as u64;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO deletions (kind, requested_by, reason, camera_id, from_unix_ms, \
             to_unix_ms, frames_deleted, images_deleted, done_unix_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(scope.kind)
        .bind(&scope.requested_by)
        .bind(&scope.reason)
        .bind(scope.camera_id.map(i64::from))
        .bind(scope.from_unix_ms)
        .bind(scope.to_unix_ms)
        .bind(i64::try_from(frames_deleted).unwrap_or(i64::MAX))
        .bind(i64::try_from(images_deleted).unwrap_or(i64::MAX))
        .bind(now_unix_ms)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DeletionRecord {
            id,
            kind: scope.kind.to_owned(),
            requested_by: scope.requested_by,
            reason: scope.reason,
            camera_id: scope.camera_id,
            from_unix_ms: scope.from_unix_ms,
            to_unix_ms: scope.to_unix_ms,
            frames_deleted,
            images_deleted,
            done_unix_ms: now_unix_ms,
        })
    }
}

/// Opens an existing node's local store for an operator command (`backroom node-data`): the
/// data directory must hold a `node.db`, and the key file must exist (it is never created here).
pub async fn open_existing(data_dir: &Path, key_file: &Path) -> anyhow::Result<LocalStore> {
    use anyhow::Context;
    let db = data_dir.join("node.db");
    anyhow::ensure!(
        db.is_file(),
        "{} holds no node database (node.db): is it a store node's data_dir?",
        data_dir.display()
    );
    let key = key_file.to_owned();
    let vault = tokio::task::spawn_blocking(move || Vault::open(&key))
        .await
        .context("key file task failed")??;
    let queue = crate::metrics_sync::MetricQueue::open(data_dir).await?;
    Ok(LocalStore::new(
        queue.pool.clone(),
        data_dir,
        Arc::new(vault),
    ))
}

struct Scope {
    kind: &'static str,
    requested_by: String,
    reason: String,
    camera_id: Option<u32>,
    from_unix_ms: i64,
    to_unix_ms: i64,
}

fn stored_frame(row: &sqlx::sqlite::SqliteRow) -> Result<StoredFrame, StoreError> {
    Ok(StoredFrame {
        id: row.try_get("id")?,
        camera_id: u32::try_from(row.try_get::<i64, _>("camera_id")?).unwrap_or(u32::MAX),
        captured_unix_ms: row.try_get("captured_unix_ms")?,
        stored_unix_ms: row.try_get("stored_unix_ms")?,
        image_file: row.try_get("image_file")?,
    })
}

/// Encodes, seals and writes one image atomically (temporary file, fsync, rename).
fn write_image(
    dir: &Path,
    file: &str,
    vault: &Vault,
    camera_id: u32,
    captured_unix_ms: i64,
    image: RgbImage,
) -> Result<(), StoreError> {
    let mut encoded = std::io::Cursor::new(Vec::new());
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, IMAGE_QUALITY);
    DynamicImage::ImageRgb8(image).write_with_encoder(encoder)?;
    let sealed = vault.seal(
        &image_aad(camera_id, captured_unix_ms, file),
        encoded.get_ref(),
    )?;
    let path = dir.join(file);
    let write = |source| StoreError::Write {
        path: path.clone(),
        source,
    };
    let parent = path.parent().unwrap_or(dir);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(parent).map_err(write)?;
    let mut temp = tempfile::NamedTempFile::new_in(parent).map_err(write)?;
    std::io::Write::write_all(&mut temp, &sealed).map_err(write)?;
    temp.as_file().sync_all().map_err(write)?;
    temp.persist(&path).map_err(|e| write(e.error))?;
    Ok(())
}

fn open_image_file(
    dir: &Path,
    file: &str,
    vault: &Vault,
    camera_id: u32,
    captured_unix_ms: i64,
) -> Result<Vec<u8>, StoreError> {
    let path = dir.join(file);
    let sealed = std::fs::read(&path).map_err(|source| StoreError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(vault.open_sealed(&image_aad(camera_id, captured_unix_ms, file), &sealed)?)
}

fn read_image(
    dir: &Path,
    file: &str,
    vault: &Vault,
    camera_id: u32,
    captured_unix_ms: i64,
) -> Result<RgbImage, StoreError> {
    let plain = open_image_file(dir, file, vault, camera_id, captured_unix_ms)?;
    Ok(image::load_from_memory_with_format(&plain, ImageFormat::Jpeg)?.to_rgb8())
}

/// Runs retention at start and then every `sweep_interval` until shutdown. A failed sweep is
/// logged and tried again at the next interval.
pub(crate) async fn run_retention(
    ctx: Arc<crate::NodeContext>,
    mut shutdown: crate::transport::Shutdown,
) -> anyhow::Result<()> {
    let settings = ctx.config.local_store.clone();
    loop {
        match ctx
            .local_store
            .prune(settings.retention, crate::now_unix_ms())
            .await
        {
            Ok(Some(record)) => tracing::info!(
                frames = record.frames_deleted,
                images = record.images_deleted,
                retention_secs = settings.retention.as_secs(),
                "retention: deleted local frames older than the window"
            ),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!("retention sweep failed; will retry: {error}");
                ctx.set_error(format!("retention sweep failed: {error}"));
            }
        }
        tokio::select! {
            _ = shutdown.triggered() => return Ok(()),
            _ = tokio::time::sleep(settings.sweep_interval) => {}
        }
    }
}
