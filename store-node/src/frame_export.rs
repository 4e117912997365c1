//! Exports for approved frame requests: the only way frames leave a node.
//!
//! The coordinator lists, in the long poll's answer, the frame requests a privacy officer
//! approved for this store. For each, the node checks the task itself (window length, expiry,
//! key), gathers the redacted images it keeps for the window from the local store, seals them
//! to the requester's X25519 key (a libsodium sealed box through `crypto_box`: the coordinator
//! relays but cannot read them) and uploads the sealed bytes in chunks with a SHA-256.

use std::collections::HashSet;

use backroom_proto::v1::{
    ExportedFrame, FrameExport, FrameExportChunk, FrameExportHeader, FrameExportTask,
    FrameExportTrailer, frame_export_chunk,
};
use crypto_box::PublicKey;
use crypto_box::aead::OsRng;
use prost::Message;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use zeroize::Zeroize;

use crate::transport::{RPC_TIMEOUT, request};
use crate::{NodeContext, describe_status, now_unix_ms};

/// The longest window the node exports, whatever the coordinator asks (24 hours).
pub const MAX_EXPORT_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// What became of one task.
#[derive(Debug, PartialEq, Eq)]
pub enum ExportOutcome {
    Delivered {
        frames: usize,
        bytes: usize,
    },
    /// Not worth retrying (invalid, expired, too large, or refused by the coordinator).
    Refused(String),
    /// The coordinator could not be reached; tried again at the next poll.
    Unavailable(String),
}

/// Checks a task as the node sees it.
pub fn check_task(task: &FrameExportTask, now_unix_ms: i64) -> Result<PublicKey, String> {
    if task.expires_unix_ms <= now_unix_ms {
        return Err("the request has expired".into());
    }
    if task.from_unix_ms >= task.to_unix_ms
        || task.to_unix_ms - task.from_unix_ms > MAX_EXPORT_WINDOW_MS
    {
        return Err(format!(
            "the window [{}, {}) ms is empty or longer than 24 hours",
            task.from_unix_ms, task.to_unix_ms
        ));
    }
    let key: [u8; 32] = task
        .recipient_public_key
        .as_slice()
        .try_into()
        .map_err(|_| "the recipient key is not a 32-byte X25519 key".to_owned())?;
    Ok(PublicKey::from(key))
}

/// Builds and seals the export of `task` from the local store.
async fn sealed_export(
    ctx: &NodeContext,
    task: &FrameExportTask,
    key: PublicKey,
) -> Result<(Vec<u8>, usize), String> {
    let stored = ctx
        .local_store
        .frames_between(task.camera_id, task.from_unix_ms, task.to_unix_ms)
        .await
        .map_err(|e| format!("cannot read the local store: {e}"))?;
    let mut export = FrameExport {
        request_id: task.request_id.clone(),
        store_id: ctx.node_id(),
        frames: Vec::new(),
    };
    for frame in &stored {
        match ctx.local_store.image_jpeg(frame).await {
            Ok(Some(jpeg)) => export.frames.push(ExportedFrame {
                camera_id: frame.camera_id,
                captured_unix_ms: frame.captured_unix_ms,
                jpeg,
            }),
            Ok(None) => {}
            Err(error) => warn!(
                frame_id = frame.id,
                "a kept image cannot be read; left out of the export: {error}"
            ),
        }
    }
    let frames = export.frames.len();
    let max = usize::try_from(task.max_bytes).unwrap_or(usize::MAX);
    let sealed = tokio::task::spawn_blocking(move || {
        let mut plain = export.encode_to_vec();
        drop(export);
        // The sealed box adds a 32-byte key and a 16-byte tag.
        let result = if plain.len().saturating_add(48) > max {
            Err(format!(
                "{frames} frames make {} bytes, over the coordinator's limit of {max}: ask for a shorter window",
                plain.len()
            ))
        } else {
            key.seal(&mut OsRng, &plain)
                .map_err(|_| "sealing the export failed".to_owned())
        };
        plain.zeroize();
        result
    })
    .await
    .map_err(|e| format!("export task failed: {e}"))??;
    Ok((sealed, frames))
}

/// Delivers one approved request.
pub(crate) async fn export_one(ctx: &NodeContext, task: &FrameExportTask) -> ExportOutcome {
    let key = match check_task(task, now_unix_ms()) {
        Ok(key) => key,
        Err(reason) => return ExportOutcome::Refused(reason),
    };
    let (sealed, frames) = match sealed_export(ctx, task, key).await {
        Ok(parts) => parts,
        Err(reason) => return ExportOutcome::Refused(reason),
    };
    let bytes = sealed.len();
    // Hashing and cutting up to a few hundred MiB: off the runtime.
    let request_id = task.request_id.clone();
    let chunks =
        tokio::task::spawn_blocking(move || export_chunks(request_id, frames, &sealed)).await;
    let Ok(chunks) = chunks else {
        return ExportOutcome::Refused("export task failed".into());
    };
    let mut client = ctx.client.clone();
    let stream = futures::stream::iter(chunks);
    match client
        .upload_frame_export(request(stream, RPC_TIMEOUT * 4))
        .await
    {
        Ok(_) => ExportOutcome::Delivered { frames, bytes },
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
            ) =>
        {
            ExportOutcome::Refused(describe_status(&status))
        }
        Err(status) => ExportOutcome::Unavailable(describe_status(&status)),
    }
}

/// A sealed export as a header, data chunks of at most 1 MiB and a trailer with its SHA-256.
fn export_chunks(request_id: String, frames: usize, sealed: &[u8]) -> Vec<FrameExportChunk> {
    let mut chunks = vec![FrameExportChunk {
        kind: Some(frame_export_chunk::Kind::Header(FrameExportHeader {
            request_id,
            total_bytes: sealed.len() as u64,
            frames: u32::try_from(frames).unwrap_or(u32::MAX),
        })),
    }];
    for piece in sealed.chunks(backroom_proto::MAX_CHUNK_BYTES) {
        chunks.push(FrameExportChunk {
            kind: Some(frame_export_chunk::Kind::Data(piece.to_vec())),
        });
    }
    chunks.push(FrameExportChunk {
        kind: Some(frame_export_chunk::Kind::Trailer(FrameExportTrailer {
            sha256: Sha256::digest(sealed).to_vec(),
        })),
    });
    chunks
}

/// Delivers the approved requests of a poll that were not handled yet; returns whether it did
/// anything. A request is handled once (delivered or refused); an unreachable coordinator leaves
/// it for the next poll.
pub(crate) async fn run_exports(
    ctx: &NodeContext,
    handled: &mut HashSet<String>,
    tasks: Vec<FrameExportTask>,
) -> bool {
    let mut acted = false;
    for task in tasks {
        if handled.contains(&task.request_id) {
            continue;
        }
        acted = true;
        match export_one(ctx, &task).await {
            ExportOutcome::Delivered { frames, bytes } => {
                info!(request_id = %task.request_id, frames, bytes, "approved frame request delivered (sealed to the requester)");
                handled.insert(task.request_id);
            }
            ExportOutcome::Refused(reason) => {
                warn!(request_id = %task.request_id, "frame request not exported: {reason}");
                ctx.set_error(format!(
                    "frame request {} not exported: {reason}",
                    task.request_id
                ));
                handled.insert(task.request_id);
            }
            ExportOutcome::Unavailable(reason) => {
                warn!(request_id = %task.request_id, "frame export failed; will retry: {reason}");
            }
        }
    }
    acted
}
