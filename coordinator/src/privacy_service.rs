//! gRPC adapter for privacy officers: decisions on frame requests ([`crate::frame_requests`]).

use std::sync::Arc;

use backroom_proto::v1 as pb;
use backroom_proto::v1::privacy_service_server::PrivacyService;
use tonic::{Request, Response, Status};

use crate::admin_service::list_frame_requests;
use crate::auth::require;
use crate::core::Core;
use crate::frame_requests::request_to_proto;
use crate::identity::Role;

#[derive(Debug, Clone)]
pub struct PrivacyApi {
    core: Arc<Core>,
}

impl PrivacyApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl PrivacyService for PrivacyApi {
    async fn list_frame_requests(
        &self,
        request: Request<pb::ListFrameRequestsRequest>,
    ) -> Result<Response<pb::ListFrameRequestsResponse>, Status> {
        require(&request, Role::PrivacyOfficer)?;
        Ok(Response::new(list_frame_requests(&self.core).await?))
    }

    async fn decide_frame_request(
        &self,
        request: Request<pb::DecideFrameRequestRequest>,
    ) -> Result<Response<pb::FrameRequest>, Status> {
        let peer = require(&request, Role::PrivacyOfficer)?;
        let decision = request.into_inner();
        if decision.note.len() > 1024 {
            return Err(Status::invalid_argument(
                "the note is longer than 1024 bytes",
            ));
        }
        let row = self
            .core
            .decide_frame_request(
                &peer.name,
                &decision.request_id,
                decision.approve,
                decision.note.trim(),
            )
            .await?;
        crate::audit::hooks::frames_decided(
            &self.core,
            &peer,
            &row,
            decision.approve,
            decision.note.trim(),
        )
        .await;
        Ok(Response::new(request_to_proto(&self.core, &row).await?))
    }
}
