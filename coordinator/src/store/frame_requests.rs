//! Frame requests as stored, with their append-only event trail.
//!
//! Every state change and its event are written in one transaction, and every change is
//! conditional on the state it starts from, so two concurrent decisions cannot both apply.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, to_i64, to_u64};
use crate::error::{CoordinatorError, Result};

/// A frame request as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRequestRow {
    pub request_id: String,
    pub store_id: String,
    pub camera_id: Option<u32>,
    pub from_unix_ms: i64,
    pub to_unix_ms: i64,
    pub reason: String,
    pub requested_by: String,
    pub recipient_key: Vec<u8>,
    pub state: String,
    pub decided_by: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub frames: u32,
    pub export_bytes: u64,
    pub export_path: Option<String>,
}

/// One step in a request's trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRequestEventRow {
    pub at_unix_ms: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

fn request_from_row(row: &AnyRow) -> Result<FrameRequestRow> {
    Ok(FrameRequestRow {
        request_id: row.try_get("request_id")?,
        store_id: row.try_get("store_id")?,
        camera_id: row
            .try_get::<Option<i64>, _>("camera_id")?
            .and_then(|c| u32::try_from(c).ok()),
        from_unix_ms: row.try_get("from_unix_ms")?,
        to_unix_ms: row.try_get("to_unix_ms")?,
        reason: row.try_get("reason")?,
        requested_by: row.try_get("requested_by")?,
        recipient_key: row.try_get("recipient_key")?,
        state: row.try_get("state")?,
        decided_by: row.try_get("decided_by")?,
        created_unix_ms: row.try_get("created_unix_ms")?,
        expires_unix_ms: row.try_get("expires_unix_ms")?,
        frames: u32::try_from(row.try_get::<i64, _>("exported_frames")?).unwrap_or(0),
        export_bytes: to_u64(row.try_get("export_bytes")?),
        export_path: row.try_get("export_path")?,
    })
}

async fn add_event(
    tx: &mut sqlx::AnyConnection,
    request_id: &str,
    actor: &str,
    action: &str,
    detail: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO frame_request_events (request_id, at_unix_ms, actor, action, detail) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(request_id)
    .bind(now)
    .bind(actor)
    .bind(action)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Store {
    /// Stores a new pending request and its `requested` event.
    pub async fn insert_frame_request(&self, row: &FrameRequestRow) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO frame_requests (request_id, store_id, camera_id, from_unix_ms, \
             to_unix_ms, reason, requested_by, recipient_key, state, created_unix_ms, \
             expires_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10)",
        )
        .bind(&row.request_id)
        .bind(&row.store_id)
        .bind(row.camera_id.map(i64::from))
        .bind(row.from_unix_ms)
        .bind(row.to_unix_ms)
        .bind(&row.reason)
        .bind(&row.requested_by)
        .bind(&row.recipient_key)
        .bind(row.created_unix_ms)
        .bind(row.expires_unix_ms)
        .execute(&mut *tx)
        .await?;
        let camera = row
            .camera_id
            .map_or_else(|| "all cameras".to_owned(), |c| format!("camera {c}"));
        let detail = format!(
            "{} [{}, {}) ms, {camera}: {}",
            row.store_id, row.from_unix_ms, row.to_unix_ms, row.reason
        );
        add_event(
            &mut tx,
            &row.request_id,
            &row.requested_by,
            "requested",
            &detail,
            row.created_unix_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn frame_request(&self, request_id: &str) -> Result<Option<FrameRequestRow>> {
        let row = sqlx::query("SELECT * FROM frame_requests WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    /// Every request, newest first.
    pub async fn list_frame_requests(&self) -> Result<Vec<FrameRequestRow>> {
        let rows = sqlx::query("SELECT * FROM frame_requests ORDER BY created_unix_ms DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(request_from_row).collect()
    }

    pub async fn frame_request_events(
        &self,
        request_id: &str,
    ) -> Result<Vec<FrameRequestEventRow>> {
        let rows = sqlx::query(
            "SELECT at_unix_ms, actor, action, detail FROM frame_request_events \
             WHERE request_id = $1 ORDER BY id",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FrameRequestEventRow {
                    at_unix_ms: r.try_get("at_unix_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Moves a pending, unexpired request to `approved` or `denied`.
    pub async fn decide_frame_request(
        &self,
        request_id: &str,
        approve: bool,
        officer: &str,
        note: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let state = if approve { "approved" } else { "denied" };
        let changed = sqlx::query(
            "UPDATE frame_requests SET state = $1, decided_by = $2 \
             WHERE request_id = $3 AND state = 'pending' AND expires_unix_ms > $4",
        )
        .bind(state)
        .bind(officer)
        .bind(request_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "frame request {request_id} is not pending (already decided, or expired)"
            )));
        }
        add_event(&mut tx, request_id, officer, state, note, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Approved, unexpired requests for `store_id` that wait for its export.
    pub async fn approved_frame_requests(
        &self,
        store_id: &str,
        now: i64,
    ) -> Result<Vec<FrameRequestRow>> {
        let rows = sqlx::query(
            "SELECT * FROM frame_requests WHERE store_id = $1 AND state = 'approved' \
             AND expires_unix_ms > $2 ORDER BY created_unix_ms",
        )
        .bind(store_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(request_from_row).collect()
    }

    /// Every approved, unexpired request of every store, oldest first (for the long polls'
    /// shared view).
    pub async fn all_approved_frame_requests(&self, now: i64) -> Result<Vec<FrameRequestRow>> {
        let rows = sqlx::query(
            "SELECT * FROM frame_requests WHERE state = 'approved' AND expires_unix_ms > $1 \
             ORDER BY created_unix_ms",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(request_from_row).collect()
    }

    /// Records a received export: `approved` → `delivered`, only while unexpired.
    pub async fn mark_frames_delivered(
        &self,
        request_id: &str,
        store_id: &str,
        export_path: &str,
        frames: u32,
        export_bytes: u64,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE frame_requests SET state = 'delivered', export_path = $1, exported_frames = $2, \
             export_bytes = $3 WHERE request_id = $4 AND store_id = $5 AND state = 'approved' \
             AND expires_unix_ms > $6",
        )
        .bind(export_path)
        .bind(i64::from(frames))
        .bind(to_i64(export_bytes))
        .bind(request_id)
        .bind(store_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "frame request {request_id} is not approved for {store_id} (or it expired)"
            )));
        }
        let detail = format!("{frames} frame(s), {export_bytes} sealed bytes");
        add_event(&mut tx, request_id, store_id, "delivered", &detail, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends an event (a download, say) without changing the state.
    pub async fn record_frame_request_event(
        &self,
        request_id: &str,
        actor: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        add_event(&mut tx, request_id, actor, action, detail, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks every live request past its expiry `expired` (with an event each); returns the
    /// expired requests that still have an export file, newly expired or not, so the caller can
    /// delete them and then [`Store::forget_frame_export`].
    pub async fn expire_frame_requests(&self, now: i64) -> Result<Vec<FrameRequestRow>> {
        // A write transaction: it reads, then writes.
        let mut tx = self.begin_write().await?;
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT request_id FROM frame_requests WHERE state IN ('pending', 'approved', \
             'delivered') AND expires_unix_ms <= $1",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for request_id in &due {
            sqlx::query("UPDATE frame_requests SET state = 'expired' WHERE request_id = $1")
                .bind(request_id)
                .execute(&mut *tx)
                .await?;
            add_event(&mut tx, request_id, "coordinator", "expired", "", now).await?;
        }
        let rows = sqlx::query(
            "SELECT * FROM frame_requests WHERE state = 'expired' AND export_path IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(request_from_row).collect()
    }

    /// Forgets an expired request's export once its file is deleted.
    pub async fn forget_frame_export(&self, request_id: &str, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE frame_requests SET export_path = NULL WHERE request_id = $1")
            .bind(request_id)
            .execute(&mut *tx)
            .await?;
        add_event(
            &mut tx,
            request_id,
            "coordinator",
            "export deleted",
            "",
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
