//! gRPC adapter for store nodes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backroom_proto::MAX_CHUNK_BYTES;
use backroom_proto::v1::node_service_server::NodeService;
use backroom_proto::v1::{
    DownloadModelRequest, FrameExportChunk, FrameExportHeader, HeartbeatRequest, HeartbeatResponse,
    HelloRequest, HelloResponse, ModelChunk, ModelHeader, ModelTrailer, PollTaskRequest,
    PollTaskResponse, SyncMetricsRequest, SyncMetricsResponse, UpdateChunk,
    UploadFrameExportResponse, UploadUpdateResponse, frame_export_chunk, model_chunk, update_chunk,
};
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::require;
use crate::core::Core;
use crate::error::CoordinatorError;
use crate::identity::Role;
use crate::telemetry::{RefusalStage, refusal_class};
use crate::upload::UpdateAssembler;
use prost::Message as _;

const MAX_POLL_WAIT_SECS: u32 = 60;

#[derive(Debug, Clone)]
pub struct NodeApi {
    core: Arc<Core>,
}

impl NodeApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let peer = require(&request, Role::Node)?;
        let hello = request.into_inner();
        check_text("lineage", &hello.lineage)?;
        check_text("backend", &hello.backend)?;
        self.core
            .node_seen(
                &peer.name,
                &hello.lineage,
                hello.installed_version,
                &hello.backend,
            )
            .await?;
        tracing::info!(node_id = %peer.name, installed_version = hello.installed_version, backend = %hello.backend, "node said hello");
        Ok(Response::new(HelloResponse {
            node_id: peer.name,
            heartbeat_interval_secs: self.core.settings.heartbeat_interval_secs,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let peer = require(&request, Role::Node)?;
        let beat = request.into_inner();
        check_text("lineage", &beat.lineage)?;
        check_text("backend", &beat.backend)?;
        self.core
            .node_seen(
                &peer.name,
                &beat.lineage,
                beat.installed_version,
                &beat.backend,
            )
            .await?;
        Ok(Response::new(HeartbeatResponse {}))
    }

    async fn poll_task(
        &self,
        request: Request<PollTaskRequest>,
    ) -> Result<Response<PollTaskResponse>, Status> {
        let peer = require(&request, Role::Node)?;
        let poll = request.into_inner();
        check_text("lineage", &poll.lineage)?;
        let wait = Duration::from_secs(u64::from(poll.wait_secs.min(MAX_POLL_WAIT_SECS)));
        let polled = {
            let waiting = self.core.telemetry.polls_waiting.clone();
            waiting.inc();
            // Decremented however the poll ends (answered, cancelled by a dropped connection).
            let _waiting = scopeguard_dec(waiting);
            self.core
                .poll_task(&peer.name, &poll.lineage, poll.installed_version, wait)
                .await?
        };
        // A key set that cannot be read must not stop tasks from reaching nodes: the poll goes
        // out without it (downloads still refuse to serve a model without one).
        let registry = self.core.registry.clone();
        let key_set = match tokio::task::spawn_blocking(move || registry.key_set()).await {
            Ok(Ok(set)) => Some(set),
            Ok(Err(error)) => {
                tracing::warn!("poll answered without a key set: {error}");
                None
            }
            Err(join) => {
                tracing::warn!("key set task failed: {join}");
                None
            }
        };
        let (key_set, key_set_signature) = match key_set {
            Some(set) if set.set.version > poll.key_set_version => (set.bytes, set.signature),
            _ => (Vec::new(), Vec::new()),
        };
        Ok(Response::new(PollTaskResponse {
            task: polled.task,
            latest_version: polled.latest,
            frame_exports: polled.exports,
            offered_version: polled.offered,
            key_set,
            key_set_signature,
        }))
    }

    type DownloadModelStream = ChunkStream;

    async fn download_model(
        &self,
        request: Request<DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let peer = require(&request, Role::Node)?;
        let wanted = request.into_inner();
        let row = self
            .core
            .store
            .version(&wanted.lineage, wanted.version)
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no version {} of lineage {:?}",
                    wanted.version, wanted.lineage
                ))
            })?;
        // Checked against the recorded digest: weights changed at rest are never served.
        let weights = self.core.registry.load_weights(&row).await?;
        // The current key set, whatever set was current when the version was signed: nodes
        // must learn of rotations and revocations.
        let registry = self.core.registry.clone();
        let key_set = tokio::task::spawn_blocking(move || registry.key_set())
            .await
            .map_err(|e| Status::internal(format!("key set task failed: {e}")))??;
        tracing::info!(node_id = %peer.name, lineage = %row.lineage, version = row.version, "serving model");
        // The node checks the weights against the signed manifest in any case.
        let sha = hex::decode(&row.weights_sha256).unwrap_or_default();
        let mut chunks = Vec::with_capacity(weights.len() / MAX_CHUNK_BYTES + 3);
        chunks.push(Ok(ModelChunk {
            kind: Some(model_chunk::Kind::Header(ModelHeader {
                manifest: row.manifest,
                signature: row.signature,
                weights_size: weights.len() as u64,
                key_set: key_set.bytes,
                key_set_signature: key_set.signature,
            })),
        }));
        self.core.telemetry.sent("download_model", weights.len());
        for piece in weights.chunks(MAX_CHUNK_BYTES) {
            chunks.push(Ok(ModelChunk {
                kind: Some(model_chunk::Kind::Data(piece.to_vec())),
            }));
        }
        chunks.push(Ok(ModelChunk {
            kind: Some(model_chunk::Kind::Trailer(ModelTrailer { sha256: sha })),
        }));
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn upload_update(
        &self,
        request: Request<Streaming<UpdateChunk>>,
    ) -> Result<Response<UploadUpdateResponse>, Status> {
        let peer = require(&request, Role::Node)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(UpdateChunk {
                kind: Some(update_chunk::Kind::Header(header)),
            }) => header,
            Some(_) => return Err(Status::invalid_argument("the first chunk must be a header")),
            None => return Err(Status::invalid_argument("empty upload")),
        };
        let round = match self.core.check_upload_header(&peer.name, &header).await {
            Ok(round) => round,
            Err(error) => {
                let message = error.to_string();
                self.core
                    .telemetry
                    .update_refused(refusal_class(RefusalStage::Header, &message));
                self.core
                    .refuse_update(&header.round_id, &peer.name, &message)
                    .await;
                return Err(error.into());
            }
        };
        let mut assembler = UpdateAssembler::new(self.core.registry.num_parameters());
        let received =
            receive_update(&mut stream, &mut assembler)
                .await
                .and_then(|(delta, norm)| {
                    match Core::check_update_norm(&round, delta.len(), norm) {
                        Ok(()) => Ok((delta, norm)),
                        Err(error) => Err(Refused::Content(error, Some(delta))),
                    }
                });
        let (delta, norm) = match received {
            Ok(update) => update,
            Err(refused) => {
                self.core
                    .telemetry
                    .received("upload_update", assembler.received_bytes());
                let error = match refused {
                    Refused::Transport(error) => {
                        self.core.telemetry.update_refused(refusal_class(
                            RefusalStage::Transport,
                            &error.to_string(),
                        ));
                        error
                    }
                    Refused::Content(error, delta) => {
                        self.core.telemetry.update_refused(refusal_class(
                            RefusalStage::Content,
                            &error.to_string(),
                        ));
                        let bytes = match delta {
                            Some(delta) => delta.iter().flat_map(|v| v.to_le_bytes()).collect(),
                            None => assembler.into_received_bytes(),
                        };
                        self.core
                            .quarantine_update(
                                &round.round_id,
                                &peer.name,
                                &error.to_string(),
                                bytes,
                            )
                            .await;
                        error
                    }
                };
                self.core
                    .refuse_update(&round.round_id, &peer.name, &error.to_string())
                    .await;
                return Err(error.into());
            }
        };
        self.core
            .telemetry
            .received("upload_update", delta.len() * 4);
        let accepted = self
            .core
            .accept_update(
                &round,
                &peer.name,
                delta,
                norm,
                header.num_examples,
                header.within_clip_norm,
            )
            .await;
        match accepted {
            Ok(updates_received) => {
                self.core.telemetry.update_accepted();
                Ok(Response::new(UploadUpdateResponse {
                    norm: norm as f32,
                    updates_received,
                }))
            }
            Err(error) => {
                self.core
                    .telemetry
                    .update_refused(refusal_class(RefusalStage::Recording, &error.to_string()));
                self.core
                    .refuse_update(&round.round_id, &peer.name, &error.to_string())
                    .await;
                Err(error.into())
            }
        }
    }

    async fn upload_frame_export(
        &self,
        request: Request<Streaming<FrameExportChunk>>,
    ) -> Result<Response<UploadFrameExportResponse>, Status> {
        let peer = require(&request, Role::Node)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(FrameExportChunk {
                kind: Some(frame_export_chunk::Kind::Header(header)),
            }) => header,
            Some(_) => return Err(Status::invalid_argument("the first chunk must be a header")),
            None => return Err(Status::invalid_argument("empty upload")),
        };
        self.core.check_export_header(&peer.name, &header).await?;
        let final_path = self.core.export_path(&header.request_id);
        let temp_path = final_path.with_extension("partial");
        let written = receive_export(&mut stream, &header, &temp_path).await;
        let result = match written {
            Ok(()) => match tokio::fs::rename(&temp_path, &final_path).await {
                Ok(()) => self
                    .core
                    .accept_export(&peer.name, &header, &final_path)
                    .await
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&final_path);
                    }),
                Err(e) => Err(CoordinatorError::io("cannot keep the export", e)),
            },
            Err(error) => Err(error),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp_path).await;
        }
        result?;
        Ok(Response::new(UploadFrameExportResponse {}))
    }

    async fn sync_metrics(
        &self,
        request: Request<SyncMetricsRequest>,
    ) -> Result<Response<SyncMetricsResponse>, Status> {
        let peer = require(&request, Role::Node)?;
        let sync = request.into_inner();
        self.core
            .telemetry
            .received("sync_metrics", sync.encoded_len());
        let (accepted, duplicates) = self.core.sync_metrics(&peer.name, &sync.batches).await?;
        self.core.telemetry.metric_releases(accepted, duplicates);
        tracing::debug!(node_id = %peer.name, accepted, duplicates, "metric batches synced");
        Ok(Response::new(SyncMetricsResponse {
            accepted,
            duplicates,
        }))
    }
}

/// Writes an export's data chunks to `path`, checking sizes as they come and the SHA-256 at the
/// trailer; fsynced before it returns.
async fn receive_export(
    stream: &mut Streaming<FrameExportChunk>,
    header: &FrameExportHeader,
    path: &std::path::Path,
) -> Result<(), CoordinatorError> {
    let invalid = |m: String| CoordinatorError::InvalidArgument(m);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| CoordinatorError::io("cannot create the exports directory", e))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| CoordinatorError::io("cannot write an export", e))?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    loop {
        let chunk = stream
            .message()
            .await
            .map_err(|s| invalid(format!("upload stream broke: {}", s.message())))?;
        match chunk.and_then(|c| c.kind) {
            Some(frame_export_chunk::Kind::Data(data)) => {
                if data.len() > MAX_CHUNK_BYTES {
                    return Err(invalid(format!(
                        "chunk of {} bytes exceeds {MAX_CHUNK_BYTES}",
                        data.len()
                    )));
                }
                received += data.len() as u64;
                if received > header.total_bytes {
                    return Err(invalid(format!(
                        "more than the declared {} bytes",
                        header.total_bytes
                    )));
                }
                hasher.update(&data);
                file.write_all(&data)
                    .await
                    .map_err(|e| CoordinatorError::io("cannot write an export", e))?;
            }
            Some(frame_export_chunk::Kind::Trailer(trailer)) => {
                if received != header.total_bytes {
                    return Err(invalid(format!(
                        "{received} bytes received, {} declared",
                        header.total_bytes
                    )));
                }
                if hasher.finalize().as_slice() != trailer.sha256.as_slice() {
                    return Err(invalid("the export's SHA-256 does not match".into()));
                }
                file.sync_all()
                    .await
                    .map_err(|e| CoordinatorError::io("cannot write an export", e))?;
                return Ok(());
            }
            Some(frame_export_chunk::Kind::Header(_)) => {
                return Err(invalid("a second header chunk".into()));
            }
            None => return Err(invalid("upload ended without a trailer".into())),
        }
    }
}

fn check_text(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > 256 {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes long; at most 256",
            value.len()
        )));
    }
    Ok(())
}

/// Why an upload was refused after its header was accepted.
enum Refused {
    /// The stream itself failed (a dropped connection, a cancelled call): nothing to keep.
    Transport(CoordinatorError),
    /// What the node sent failed a check: quarantined. Carries the decoded delta when the
    /// refusal came after assembly (its norm), else the assembler holds what arrived.
    Content(CoordinatorError, Option<Vec<f32>>),
}

/// Reads an update's data chunks and trailer into `assembler`; returns the delta and its norm.
async fn receive_update(
    stream: &mut Streaming<UpdateChunk>,
    assembler: &mut UpdateAssembler,
) -> Result<(Vec<f32>, f64), Refused> {
    let content =
        |message: String| Refused::Content(CoordinatorError::InvalidArgument(message), None);
    loop {
        let chunk = stream.message().await.map_err(|s| {
            Refused::Transport(CoordinatorError::InvalidArgument(format!(
                "upload stream broke: {}",
                s.message()
            )))
        })?;
        match chunk.and_then(|c| c.kind) {
            Some(update_chunk::Kind::Data(data)) => {
                if data.len() > MAX_CHUNK_BYTES {
                    return Err(content(format!(
                        "chunk of {} bytes exceeds {MAX_CHUNK_BYTES}",
                        data.len()
                    )));
                }
                assembler
                    .push(&data)
                    .map_err(|error| Refused::Content(error, None))?;
            }
            Some(update_chunk::Kind::Trailer(trailer)) => {
                return assembler
                    .finish(&trailer.sha256)
                    .map_err(|error| Refused::Content(error, None));
            }
            Some(update_chunk::Kind::Header(_)) => {
                return Err(content("a second header chunk".into()));
            }
            None => return Err(content("upload ended without a trailer".into())),
        }
    }
}

/// Decrements a gauge when dropped.
struct GaugeDec(prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeDec {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn scopeguard_dec(gauge: prometheus_client::metrics::gauge::Gauge) -> GaugeDec {
    GaugeDec(gauge)
}
