//! gRPC adapter for ML engineers and operations.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backroom_proto::v1 as pb;
use backroom_proto::v1::admin_service_server::AdminService;
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Action, require_action, sees_store_ids};
use crate::core::{Core, PrivacyState};
use crate::frame_requests::request_to_proto;
use crate::identity::Peer;
use crate::round::{AdaptiveClipping, NoiseMode, RoundRecord, RoundSpec, RoundState, Strategy};
use crate::store::{NodeRow, VersionRow};
use crate::store_tokens::StoreTokens;

#[derive(Debug, Clone)]
pub struct AdminApi {
    core: Arc<Core>,
    tokens: Arc<StoreTokens>,
}

/// Shortest interval between two progress messages of one round watch.
const WATCH_PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl AdminApi {
    pub fn new(core: Arc<Core>, tokens: Arc<StoreTokens>) -> Self {
        Self { core, tokens }
    }
}

/// What `peer` may see of store ids: a function from id to id or opaque token.
pub(crate) fn store_view(
    tokens: &Arc<StoreTokens>,
    peer: &Peer,
) -> impl Fn(&str) -> String + Send + Sync + Clone + 'static {
    let tokens = Arc::clone(tokens);
    let sees = sees_store_ids(peer.role);
    move |id: &str| tokens.shown(id, sees)
}

/// A round as `show` lets its caller see it (sampled stores as tokens for operations).
pub(crate) fn shown_round(round: &RoundRecord, show: &impl Fn(&str) -> String) -> pb::Round {
    let mut round = round_to_proto(round);
    for node in &mut round.sampled_nodes {
        *node = show(node);
    }
    round
}

type RoundStream = Pin<Box<dyn Stream<Item = Result<pb::Round, Status>> + Send>>;
type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::FrameExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn request_frames(
        &self,
        request: Request<pb::RequestFramesRequest>,
    ) -> Result<Response<pb::FrameRequest>, Status> {
        let peer = require_action(&request, Action::RequestFrames)?;
        let row = self
            .core
            .request_frames(&peer.name, request.get_ref())
            .await?;
        crate::audit::hooks::frames_requested(&self.core, &peer, &row).await;
        Ok(Response::new(request_to_proto(&self.core, &row).await?))
    }

    async fn list_frame_requests(
        &self,
        request: Request<pb::ListFrameRequestsRequest>,
    ) -> Result<Response<pb::ListFrameRequestsResponse>, Status> {
        require_action(&request, Action::RequestFrames)?;
        Ok(Response::new(list_frame_requests(&self.core).await?))
    }

    type DownloadFramesStream = ExportStream;

    async fn download_frames(
        &self,
        request: Request<pb::GetFrameRequestRequest>,
    ) -> Result<Response<Self::DownloadFramesStream>, Status> {
        let peer = require_action(&request, Action::RequestFrames)?;
        let request_id = request.into_inner().request_id;
        let path = self
            .core
            .export_for_download(&peer.name, &request_id)
            .await?;
        let sealed = tokio::fs::read(&path).await.map_err(|e| {
            Status::from(crate::error::CoordinatorError::io(
                format!("cannot read the export of {request_id}"),
                e,
            ))
        })?;
        let row = self.core.frame_request(&request_id).await?;
        crate::audit::hooks::frames_downloaded(&self.core, &peer, &row, sealed.len()).await?;
        tracing::info!(request_id, requester = %peer.name, bytes = sealed.len(), "serving a sealed frame export");
        // Hashing a large export: off the runtime.
        let chunks =
            tokio::task::spawn_blocking(move || export_chunks(&request_id, row.frames, &sealed))
                .await
                .map_err(|e| Status::internal(format!("export task failed: {e}")))?;
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn start_round(
        &self,
        request: Request<pb::StartRoundRequest>,
    ) -> Result<Response<pb::Round>, Status> {
        let peer = require_action(&request, Action::StartRound)?;
        let start = request.into_inner();
        let spec = start
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let spec = spec_from_proto(&spec)?;
        let round = self
            .core
            .start_round(&start.lineage, spec, &peer.name)
            .await?;
        crate::audit::hooks::round_started(&self.core, &peer, &round).await;
        Ok(Response::new(round_to_proto(&round)))
    }

    async fn get_round(
        &self,
        request: Request<pb::GetRoundRequest>,
    ) -> Result<Response<pb::Round>, Status> {
        let peer = require_action(&request, Action::ReadRounds)?;
        let show = store_view(&self.tokens, &peer);
        let round = self.core.round(&request.into_inner().round_id).await?;
        Ok(Response::new(shown_round(&round, &show)))
    }

    async fn list_rounds(
        &self,
        request: Request<pb::ListRoundsRequest>,
    ) -> Result<Response<pb::ListRoundsResponse>, Status> {
        let peer = require_action(&request, Action::ReadRounds)?;
        let show = store_view(&self.tokens, &peer);
        let rounds = self
            .core
            .store
            .list_rounds(&request.into_inner().lineage)
            .await?;
        Ok(Response::new(pb::ListRoundsResponse {
            rounds: rounds.iter().map(|r| shown_round(r, &show)).collect(),
        }))
    }

    async fn list_quarantine(
        &self,
        request: Request<pb::ListQuarantineRequest>,
    ) -> Result<Response<pb::ListQuarantineResponse>, Status> {
        require_action(&request, Action::ReadQuarantine)?;
        let round_id = request.into_inner().round_id;
        if !round_id.is_empty() {
            // A clear NOT_FOUND for a mistyped id, rather than an empty list.
            self.core.round(&round_id).await?;
        }
        let rows = self
            .core
            .store
            .list_quarantined((!round_id.is_empty()).then_some(round_id.as_str()))
            .await?;
        Ok(Response::new(pb::ListQuarantineResponse {
            updates: rows
                .into_iter()
                .map(|row| pb::QuarantinedUpdate {
                    round_id: row.round_id,
                    node_id: row.node_id,
                    reason: row.reason,
                    received_bytes: row.received_bytes,
                    sha256: row.sha256,
                    blob_path: row.blob_path.unwrap_or_default(),
                    received_unix_ms: row.received_unix_ms,
                })
                .collect(),
        }))
    }

    type WatchRoundStream = RoundStream;

    async fn watch_round(
        &self,
        request: Request<pb::GetRoundRequest>,
    ) -> Result<Response<Self::WatchRoundStream>, Status> {
        let peer = require_action(&request, Action::ReadRounds)?;
        let show = store_view(&self.tokens, &peer);
        let round_id = request.into_inner().round_id;
        let first = self.core.round(&round_id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let core = Arc::clone(&self.core);
        tokio::spawn(async move {
            let mut changes = core.subscribe();
            let mut last = first;
            if tx.send(Ok(shown_round(&last, &show))).await.is_err() {
                return;
            }
            // A round of a thousand stores changes a thousand times while training (each update
            // counted): progress goes out at most every WATCH_PROGRESS_EVERY, a change of state
            // at once, and the last progress once the changes stop.
            let mut last_sent = tokio::time::Instant::now();
            let mut held = false;
            while !last.state.is_final() && !core.is_shutting_down() {
                let wait = if held {
                    WATCH_PROGRESS_EVERY.saturating_sub(last_sent.elapsed())
                } else {
                    Duration::from_secs(5)
                };
                core.wait_for_change(&mut changes, wait).await;
                // The whole round (with its participants) only when there is something to send.
                let progress = match core.round_progress(&round_id).await {
                    Ok(progress) => progress,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                };
                let counts_moved = progress.accepted != last.updates_accepted
                    || progress.refused != last.updates_refused;
                if progress.state == last.state {
                    if !counts_moved {
                        held = false;
                        continue;
                    }
                    if last_sent.elapsed() < WATCH_PROGRESS_EVERY {
                        held = true;
                        continue;
                    }
                }
                match core.round(&round_id).await {
                    Ok(now) => {
                        if now == last {
                            held = false;
                            continue;
                        }
                        if tx.send(Ok(shown_round(&now, &show))).await.is_err() {
                            return;
                        }
                        last = now;
                        last_sent = tokio::time::Instant::now();
                        held = false;
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_round(
        &self,
        request: Request<pb::GetRoundRequest>,
    ) -> Result<Response<pb::Round>, Status> {
        let peer = require_action(&request, Action::CancelRound)?;
        let round_id = request.into_inner().round_id;
        tracing::info!(round_id, by = %peer.name, "cancel requested");
        let round = self.core.cancel_round(&round_id).await?;
        crate::audit::hooks::round_cancelled(&self.core, &peer, &round).await;
        Ok(Response::new(round_to_proto(&round)))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        require_action(&request, Action::ReadModels)?;
        let lineage = request.into_inner().lineage;
        let rows = self.core.store.list_versions(&lineage).await?;
        let mut authors = std::collections::HashMap::new();
        let mut lineages: Vec<&str> = rows.iter().map(|r| r.lineage.as_str()).collect();
        lineages.dedup();
        for name in lineages {
            for (version, started_by, published_by) in self.core.store.version_authors(name).await?
            {
                authors.insert((name.to_owned(), version), (started_by, published_by));
            }
        }
        let models = rows
            .into_iter()
            .map(|row| {
                let (started_by, published_by) = authors
                    .remove(&(row.lineage.clone(), row.version))
                    .unwrap_or_default();
                let mut model = version_to_proto(row);
                model.started_by = started_by;
                model.published_by = published_by;
                model
            })
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn promote_model(
        &self,
        request: Request<pb::PromoteModelRequest>,
    ) -> Result<Response<pb::ModelChannels>, Status> {
        let peer = require_action(&request, Action::ChangeRollout)?;
        let promote = request.into_inner();
        let canary = match promote.channel.as_str() {
            "stable" => {
                if promote.percent != 0 && promote.percent != 100 {
                    return Err(Status::invalid_argument(
                        "stable reaches every store; --percent is for the canary channel",
                    ));
                }
                None
            }
            "canary" => Some(promote.percent),
            other => {
                return Err(Status::invalid_argument(format!(
                    "channel must be \"stable\" or \"canary\", got {other:?}"
                )));
            }
        };
        let channels = self
            .core
            .promote(&promote.lineage, promote.version, canary, &peer.name)
            .await?;
        crate::audit::hooks::model_promoted(
            &self.core,
            &peer,
            &promote.lineage,
            promote.version,
            canary,
        )
        .await;
        Ok(Response::new(channels_to_proto(
            &promote.lineage,
            &channels,
        )))
    }

    async fn rollback_model(
        &self,
        request: Request<pb::RollbackModelRequest>,
    ) -> Result<Response<pb::ModelVersion>, Status> {
        let peer = require_action(&request, Action::ChangeRollout)?;
        let rollback = request.into_inner();
        let row = self
            .core
            .rollback(&rollback.lineage, rollback.to_version, &peer.name)
            .await?;
        crate::audit::hooks::model_rolled_back(&self.core, &peer, rollback.to_version, &row).await;
        let mut model = version_to_proto(row);
        model.published_by = peer.name;
        Ok(Response::new(model))
    }

    async fn get_model_channels(
        &self,
        request: Request<pb::GetModelChannelsRequest>,
    ) -> Result<Response<pb::ModelChannels>, Status> {
        require_action(&request, Action::ReadModels)?;
        let lineage = request.into_inner().lineage;
        let channels = self.core.store.channels(&lineage).await?;
        Ok(Response::new(channels_to_proto(&lineage, &channels)))
    }

    async fn query_metrics(
        &self,
        request: Request<pb::QueryMetricsRequest>,
    ) -> Result<Response<pb::QueryMetricsResponse>, Status> {
        let peer = require_action(&request, Action::ReadMetrics)?;
        let query = request.into_inner();
        let show = store_view(&self.tokens, &peer);
        let response = self
            .core
            .query_metrics_for(&peer.name, &query, &show, !sees_store_ids(peer.role))
            .await?;
        crate::audit::hooks::metrics_queried(
            &self.core,
            &peer,
            format!("{query:?}"),
            response.rows.len(),
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let peer = require_action(&request, Action::ReadNodes)?;
        let show = store_view(&self.tokens, &peer);
        let nodes = self.core.store.list_nodes().await?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes
                .into_iter()
                .map(|n| {
                    let mut node = node_to_proto(n);
                    node.node_id = show(&node.node_id);
                    node
                })
                .collect(),
        }))
    }

    async fn get_privacy(
        &self,
        request: Request<pb::GetPrivacyRequest>,
    ) -> Result<Response<pb::PrivacyReport>, Status> {
        require_action(&request, Action::ReadPrivacy)?;
        let lineage = request.into_inner().lineage;
        let report = self.core.privacy_state(&lineage).await?;
        Ok(Response::new(privacy_to_proto(report)))
    }
}

pub fn spec_from_proto(spec: &pb::RoundSpec) -> Result<RoundSpec, Status> {
    let strategy = Strategy::parse(&spec.strategy).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown strategy {:?}; this version supports {}",
            spec.strategy,
            Strategy::NAMES
        ))
    })?;
    // Defaults for the strategy's own parameter; a parameter the strategy has no use for is
    // kept, so that validation refuses it instead of ignoring it.
    let server_learning_rate = match (strategy.server_optimizer(), spec.server_learning_rate) {
        (Some(_), None) => Some(crate::strategy::DEFAULT_SERVER_LEARNING_RATE),
        (_, given) => given,
    };
    let trim_fraction = match (strategy, spec.trim_fraction) {
        (Strategy::TrimmedMean, None) => Some(crate::strategy::DEFAULT_TRIM_FRACTION),
        (_, given) => given,
    };
    let noise_mode = NoiseMode::parse(&spec.noise_mode).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown noise_mode {:?}; use \"central\" or \"distributed\"",
            spec.noise_mode
        ))
    })?;
    let adaptive_clipping = spec.adaptive_clipping.map(|a| AdaptiveClipping {
        target_quantile: a.target_quantile,
        learning_rate: a.learning_rate,
        count_stddev: a.count_stddev,
    });
    Ok(RoundSpec {
        adaptive_clipping,
        noise_mode,
        strategy,
        target_clients: spec.target_clients,
        min_clients: spec.min_clients,
        deadline_secs: spec.deadline_secs,
        local_steps: spec.local_steps,
        batch_size: spec.batch_size,
        learning_rate: spec.learning_rate,
        clip_norm: spec.clip_norm,
        noise_multiplier: spec.noise_multiplier,
        server_learning_rate,
        trim_fraction,
        proximal_mu: spec.proximal_mu,
    })
}

pub(crate) fn state_to_proto(state: RoundState) -> pb::RoundState {
    match state {
        RoundState::Pending => pb::RoundState::Pending,
        RoundState::Sampling => pb::RoundState::Sampling,
        RoundState::Training => pb::RoundState::Training,
        RoundState::Aggregating => pb::RoundState::Aggregating,
        RoundState::Published => pb::RoundState::Published,
        RoundState::Failed => pb::RoundState::Failed,
        RoundState::Cancelled => pb::RoundState::Cancelled,
    }
}

pub fn round_to_proto(round: &RoundRecord) -> pb::Round {
    pb::Round {
        round_id: round.round_id.clone(),
        lineage: round.lineage.clone(),
        state: state_to_proto(round.state) as i32,
        spec: Some(pb::RoundSpec {
            strategy: round.spec.strategy.as_str().to_owned(),
            target_clients: round.spec.target_clients,
            min_clients: round.spec.min_clients,
            deadline_secs: round.spec.deadline_secs,
            local_steps: round.spec.local_steps,
            batch_size: round.spec.batch_size,
            learning_rate: round.spec.learning_rate,
            clip_norm: round.spec.clip_norm,
            noise_multiplier: round.spec.noise_multiplier,
            noise_mode: round.spec.noise_mode.as_str().to_owned(),
            adaptive_clipping: round.spec.adaptive_clipping.map(|a| pb::AdaptiveClipping {
                target_quantile: a.target_quantile,
                learning_rate: a.learning_rate,
                count_stddev: a.count_stddev,
            }),
            server_learning_rate: round.spec.server_learning_rate,
            trim_fraction: round.spec.trim_fraction,
            proximal_mu: round.spec.proximal_mu,
        }),
        base_version: round.base_version,
        published_version: round.published_version,
        sampled_nodes: round.sampled_nodes.clone(),
        updates_accepted: round.updates_accepted,
        updates_refused: round.updates_refused,
        failure_reason: round.failure_reason.clone(),
        created_unix_ms: round.created_unix_ms,
        updated_unix_ms: round.updated_unix_ms,
        started_by: round.started_by.clone(),
        sampling_rate: round.sampling_rate,
        expected_clients: round.expected_clients,
        epsilon_after: round.epsilon_after,
        next_clip_norm: round.next_clip_norm.unwrap_or(0.0),
    }
}

pub(crate) fn privacy_to_proto(report: PrivacyState) -> pb::PrivacyReport {
    pb::PrivacyReport {
        lineage: report.lineage,
        epsilon_max: report.budget.epsilon_max,
        delta: report.budget.delta,
        epsilon_spent: report.epsilon_spent,
        rdp_epsilon: report.rdp_epsilon,
        pld_epsilon: report.pld_epsilon,
        rounds_charged: report.rounds_charged,
        rounds_remaining: report.rounds_remaining,
        ledger: report
            .ledger
            .into_iter()
            .map(|e| pb::LedgerEntry {
                round_id: e.round_id,
                sampling_rate: e.sampling_rate,
                noise_multiplier: e.noise_multiplier,
                status: e.status.as_str().to_owned(),
                epsilon_after: e.epsilon_after,
                created_unix_ms: e.created_unix_ms,
            })
            .collect(),
    }
}

pub(crate) fn version_to_proto(row: VersionRow) -> pb::ModelVersion {
    pb::ModelVersion {
        lineage: row.lineage,
        version: row.version,
        parent_version: row.parent_version,
        round_id: row.round_id,
        weights_sha256: row.weights_sha256,
        created_unix_ms: row.created_unix_ms,
        manifest: row.manifest,
        started_by: String::new(),
        published_by: String::new(),
    }
}

pub(crate) fn channels_to_proto(
    lineage: &str,
    channels: &crate::store::Channels,
) -> pb::ModelChannels {
    let newest = [&channels.stable, &channels.canary]
        .into_iter()
        .flatten()
        .max_by_key(|c| c.updated_unix_ms);
    pb::ModelChannels {
        lineage: lineage.to_owned(),
        stable_version: channels.stable.as_ref().map_or(0, |c| c.version),
        canary_version: channels.canary.as_ref().map_or(0, |c| c.version),
        canary_percent: channels.canary.as_ref().map_or(0, |c| c.percent),
        updated_by: newest.map(|c| c.updated_by.clone()).unwrap_or_default(),
        updated_unix_ms: newest.map_or(0, |c| c.updated_unix_ms),
    }
}

pub(crate) fn node_to_proto(row: NodeRow) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: row.node_id,
        last_seen_unix_ms: row.last_seen_unix_ms,
        lineage: row.lineage,
        installed_version: row.installed_version,
        backend: row.backend,
    }
}

/// Every frame request with its trail (admins and privacy officers see the same list).
pub(crate) async fn list_frame_requests(
    core: &Core,
) -> Result<pb::ListFrameRequestsResponse, Status> {
    let mut requests = Vec::new();
    for row in core.store.list_frame_requests().await? {
        requests.push(request_to_proto(core, &row).await?);
    }
    Ok(pb::ListFrameRequestsResponse { requests })
}

/// A sealed export as header, data chunks of at most 1 MiB, and trailer.
pub fn export_chunks(
    request_id: &str,
    frames: u32,
    sealed: &[u8],
) -> Vec<Result<pb::FrameExportChunk, Status>> {
    use backroom_proto::v1::frame_export_chunk::Kind;
    use sha2::{Digest, Sha256};
    let mut chunks = vec![Ok(pb::FrameExportChunk {
        kind: Some(Kind::Header(pb::FrameExportHeader {
            request_id: request_id.to_owned(),
            total_bytes: sealed.len() as u64,
            frames,
        })),
    })];
    for piece in sealed.chunks(backroom_proto::MAX_CHUNK_BYTES) {
        chunks.push(Ok(pb::FrameExportChunk {
            kind: Some(Kind::Data(piece.to_vec())),
        }));
    }
    chunks.push(Ok(pb::FrameExportChunk {
        kind: Some(Kind::Trailer(pb::FrameExportTrailer {
            sha256: Sha256::digest(sealed).to_vec(),
        })),
    }));
    chunks
}
