//! Audited requests for a store's redacted frames.
//!
//! An ML engineer (admin certificate) asks for a capture-time window of one store's frames,
//! saying why and giving an X25519 public key. Nothing happens until a privacy officer
//! (privacy-officer certificate: a different role, so never the requester) approves it. The
//! store's node then learns of it from its long poll, seals the frames it keeps for that window
//! to the requester's key, and uploads the sealed export; the coordinator cannot read it. Only
//! the requester may download it, and only until the request expires; at expiry the export is
//! deleted. Every step is an event in the request's trail.
//!
//! **Architecture Invariant:** frames leave a node only as the sealed export of an approved,
//! unexpired request, and only for the window and camera approved; the node checks the task
//! it is given, and the coordinator accepts an export only for a request in `approved` state for
//! that very store.

use std::path::PathBuf;
use std::time::Duration;

use backroom_proto::v1 as pb;
use tracing::{info, warn};

use crate::core::Core;
use crate::error::{CoordinatorError, Result};
use crate::identity::validate_name;
use crate::registry::now_unix_ms;
use crate::store::FrameRequestRow;

/// Longest capture-time window one request may cover.
pub const MAX_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// Longest life of a request (and of its export).
pub const MAX_EXPIRY_SECS: u32 = 7 * 24 * 3600;
/// X25519 public key length.
pub const PUBLIC_KEY_LEN: usize = 32;

fn new_request_id() -> String {
    let bytes: [u8; 8] = rand::random();
    format!("fr-{}-{}", now_unix_ms(), hex::encode(bytes))
}

impl Core {
    /// Files a pending request on behalf of `requester`.
    pub async fn request_frames(
        &self,
        requester: &str,
        request: &pb::RequestFramesRequest,
    ) -> Result<FrameRequestRow> {
        let invalid = |m: String| Err(CoordinatorError::InvalidArgument(m));
        if validate_name(&request.store_id).is_err() {
            return invalid(format!("{:?} is not a store id", request.store_id));
        }
        if request.from_unix_ms >= request.to_unix_ms {
            return invalid("the window must end after it starts".into());
        }
        if request.to_unix_ms - request.from_unix_ms > MAX_WINDOW_MS {
            return invalid(format!(
                "the window is longer than {} hours; ask for less",
                MAX_WINDOW_MS / 3_600_000
            ));
        }
        if request.reason.trim().is_empty() {
            return invalid("a reason is required (it is recorded)".into());
        }
        if request.recipient_public_key.len() != PUBLIC_KEY_LEN {
            return invalid(format!(
                "recipient_public_key must be a {PUBLIC_KEY_LEN}-byte X25519 key, got {} bytes",
                request.recipient_public_key.len()
            ));
        }
        if request.expires_in_secs == 0 || request.expires_in_secs > MAX_EXPIRY_SECS {
            return invalid(format!(
                "expires_in_secs must be between 1 and {MAX_EXPIRY_SECS}"
            ));
        }
        let known = self
            .store
            .list_nodes()
            .await?
            .iter()
            .any(|n| n.node_id == request.store_id);
        if !known {
            return Err(CoordinatorError::NotFound(format!(
                "no store {:?} has connected to this coordinator",
                request.store_id
            )));
        }
        let now = now_unix_ms();
        let row = FrameRequestRow {
            request_id: new_request_id(),
            store_id: request.store_id.clone(),
            camera_id: request.camera_id,
            from_unix_ms: request.from_unix_ms,
            to_unix_ms: request.to_unix_ms,
            reason: request.reason.trim().to_owned(),
            requested_by: requester.to_owned(),
            recipient_key: request.recipient_public_key.clone(),
            state: "pending".into(),
            decided_by: String::new(),
            created_unix_ms: now,
            expires_unix_ms: now.saturating_add(i64::from(request.expires_in_secs) * 1000),
            frames: 0,
            export_bytes: 0,
            export_path: None,
        };
        self.store.insert_frame_request(&row).await?;
        info!(request_id = %row.request_id, store_id = %row.store_id, requested_by = requester, "frame request filed; waiting for a privacy officer");
        Ok(row)
    }

    /// A privacy officer's decision.
    pub async fn decide_frame_request(
        &self,
        officer: &str,
        request_id: &str,
        approve: bool,
        note: &str,
    ) -> Result<FrameRequestRow> {
        let row = self.frame_request(request_id).await?;
        if row.requested_by == officer {
            return Err(CoordinatorError::FailedPrecondition(
                "a request cannot be decided by the person who filed it".into(),
            ));
        }
        self.store
            .decide_frame_request(request_id, approve, officer, note, now_unix_ms())
            .await?;
        info!(request_id, officer, approve, "frame request decided");
        // Wake the store's long poll.
        self.notify();
        self.frame_request(request_id).await
    }

    pub async fn frame_request(&self, request_id: &str) -> Result<FrameRequestRow> {
        self.store
            .frame_request(request_id)
            .await?
            .ok_or_else(|| CoordinatorError::NotFound(format!("no frame request {request_id:?}")))
    }

    /// The export task a store is sent (with its long poll) for an approved request.
    pub fn export_task(&self, r: &FrameRequestRow) -> pb::FrameExportTask {
        pb::FrameExportTask {
            request_id: r.request_id.clone(),
            camera_id: r.camera_id,
            from_unix_ms: r.from_unix_ms,
            to_unix_ms: r.to_unix_ms,
            recipient_public_key: r.recipient_key.clone(),
            expires_unix_ms: r.expires_unix_ms,
            max_bytes: self.settings.max_export_bytes,
        }
    }

    /// Checks an export's header against an approved request of this store.
    pub async fn check_export_header(
        &self,
        store_id: &str,
        header: &pb::FrameExportHeader,
    ) -> Result<FrameRequestRow> {
        let row = self.frame_request(&header.request_id).await?;
        if row.store_id != store_id {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "frame request {} is not for {store_id}",
                header.request_id
            )));
        }
        if row.state != "approved" || row.expires_unix_ms <= now_unix_ms() {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "frame request {} is {} (an export is accepted only while approved and unexpired)",
                header.request_id, row.state
            )));
        }
        if header.total_bytes > self.settings.max_export_bytes {
            return Err(CoordinatorError::ResourceExhausted(format!(
                "an export of {} bytes exceeds the limit of {}",
                header.total_bytes, self.settings.max_export_bytes
            )));
        }
        Ok(row)
    }

    /// Where a request's sealed export is kept.
    pub fn export_path(&self, request_id: &str) -> PathBuf {
        self.settings
            .exports_dir
            .join(format!("{request_id}.sealed"))
    }

    /// Records a written export.
    pub async fn accept_export(
        &self,
        store_id: &str,
        header: &pb::FrameExportHeader,
        path: &std::path::Path,
    ) -> Result<()> {
        self.store
            .mark_frames_delivered(
                &header.request_id,
                store_id,
                &path.display().to_string(),
                header.frames,
                header.total_bytes,
                now_unix_ms(),
            )
            .await?;
        info!(request_id = %header.request_id, store_id, frames = header.frames, bytes = header.total_bytes, "sealed frame export delivered");
        crate::audit::hooks::frames_delivered(
            self,
            store_id,
            &header.request_id,
            header.frames,
            header.total_bytes,
        )
        .await;
        self.notify();
        Ok(())
    }

    /// The export of `request_id` for its requester: the file's path, recorded as downloaded.
    pub async fn export_for_download(&self, requester: &str, request_id: &str) -> Result<PathBuf> {
        let row = self.frame_request(request_id).await?;
        if row.requested_by != requester {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "frame request {request_id} was filed by someone else; only they may download it"
            )));
        }
        let now = now_unix_ms();
        let path = match (row.state.as_str(), &row.export_path) {
            ("delivered", Some(path)) if row.expires_unix_ms > now => PathBuf::from(path),
            ("pending", _) => {
                return Err(CoordinatorError::FailedPrecondition(format!(
                    "frame request {request_id} is not approved yet"
                )));
            }
            ("approved", _) => {
                return Err(CoordinatorError::FailedPrecondition(format!(
                    "frame request {request_id} is approved; the store has not delivered it yet"
                )));
            }
            (state, _) => {
                let state = if row.expires_unix_ms <= now {
                    "expired"
                } else {
                    state
                };
                return Err(CoordinatorError::FailedPrecondition(format!(
                    "frame request {request_id} is {state}: nothing to download"
                )));
            }
        };
        self.store
            .record_frame_request_event(request_id, requester, "downloaded", "", now)
            .await?;
        Ok(path)
    }

    /// Expires requests past their time and deletes their exports.
    pub async fn expire_frame_requests(&self) -> Result<usize> {
        let now = now_unix_ms();
        let rows = self.store.expire_frame_requests(now).await?;
        let mut deleted = 0;
        for row in rows {
            let Some(path) = row.export_path else {
                continue;
            };
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(request_id = %row.request_id, path, "cannot delete an expired export; will retry: {e}");
                    continue;
                }
            }
            self.store.forget_frame_export(&row.request_id, now).await?;
            crate::audit::hooks::frames_expired(self, &row.request_id, &row.store_id).await;
            info!(request_id = %row.request_id, "frame request expired; its export is deleted");
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Runs [`Core::expire_frame_requests`] every `interval` until shutdown.
    pub async fn run_frame_request_sweeper(self: std::sync::Arc<Self>, interval: Duration) {
        loop {
            if let Err(error) = self.expire_frame_requests().await {
                warn!("frame request sweep failed: {error}");
            }
            if self.wait_shutdown(interval).await {
                return;
            }
        }
    }
}

/// The wire form of a request with its trail.
pub async fn request_to_proto(core: &Core, row: &FrameRequestRow) -> Result<pb::FrameRequest> {
    let history = core
        .store
        .frame_request_events(&row.request_id)
        .await?
        .into_iter()
        .map(|e| pb::FrameRequestEvent {
            at_unix_ms: e.at_unix_ms,
            actor: e.actor,
            action: e.action,
            detail: e.detail,
        })
        .collect();
    let state = if row.state != "expired" && row.expires_unix_ms <= now_unix_ms() {
        "expired".to_owned()
    } else {
        row.state.clone()
    };
    Ok(pb::FrameRequest {
        request_id: row.request_id.clone(),
        store_id: row.store_id.clone(),
        camera_id: row.camera_id,
        from_unix_ms: row.from_unix_ms,
        to_unix_ms: row.to_unix_ms,
        reason: row.reason.clone(),
        requested_by: row.requested_by.clone(),
        state,
        decided_by: row.decided_by.clone(),
        created_unix_ms: row.created_unix_ms,
        expires_unix_ms: row.expires_unix_ms,
        frames: row.frames,
        export_bytes: row.export_bytes,
        history,
    })
}
