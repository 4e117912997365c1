//! Who is calling: the role and name in the verified client certificate.

use tonic::{Request, Status};

use crate::identity::{Peer, Role, peer_from_der};

/// Reads the caller from the TLS session. The handshake already verified the chain against our
/// CA; here we read the identity it carries.
pub fn peer<T>(request: &Request<T>) -> Result<Peer, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    peer_from_der(leaf.as_ref())
        .ok_or_else(|| Status::unauthenticated("client certificate carries no Backroom identity"))
}

/// The caller, if it has `role`; `PermissionDenied` otherwise.
pub fn require<T>(request: &Request<T>, role: Role) -> Result<Peer, Status> {
    let peer = peer(request)?;
    if peer.role == role {
        Ok(peer)
    } else {
        Err(Status::permission_denied(format!(
            "{} certificate cannot call this service (it needs {} certificate)",
            peer.role.with_article(),
            role.with_article()
        )))
    }
}

/// Everything a staff certificate (admin, ML engineer, operations) can ask of the coordinator,
/// over gRPC or HTTP. Each RPC and route names one; [`Action::roles`] is the whole policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    StartRound,
    CancelRound,
    /// Round state, progress, accuracy and ε (aggregates).
    ReadRounds,
    /// Quarantined updates name the store that sent them.
    ReadQuarantine,
    /// Model versions, manifests and rollout channels.
    ReadModels,
    /// Promote to a channel, roll back.
    ChangeRollout,
    /// Noised shelf-metric aggregates.
    ReadMetrics,
    /// Enrolled nodes: last seen, version, backend.
    ReadNodes,
    /// A lineage's privacy budget and ledger.
    ReadPrivacy,
    /// Ask for, list and download a store's redacted frames (approval is a privacy officer's).
    RequestFrames,
    /// Prometheus counters and gauges.
    ReadTelemetry,
}

impl Action {
    /// The roles allowed to perform this action.
    pub fn roles(self) -> &'static [Role] {
        use Role::{Admin, MlEngineer, Operations};
        match self {
            Action::StartRound | Action::CancelRound | Action::ChangeRollout => {
                &[Admin, MlEngineer]
            }
            Action::ReadQuarantine | Action::RequestFrames => &[Admin, MlEngineer],
            Action::ReadRounds
            | Action::ReadModels
            | Action::ReadMetrics
            | Action::ReadNodes
            | Action::ReadPrivacy
            | Action::ReadTelemetry => &[Admin, MlEngineer, Operations],
        }
    }

    /// What the action is, for refusals ("... cannot start rounds").
    pub fn describe(self) -> &'static str {
        match self {
            Action::StartRound => "start rounds",
            Action::CancelRound => "cancel rounds",
            Action::ReadRounds => "read rounds",
            Action::ReadQuarantine => "read the quarantine",
            Action::ReadModels => "read model versions",
            Action::ChangeRollout => "change a model's rollout",
            Action::ReadMetrics => "read shelf metrics",
            Action::ReadNodes => "read the node list",
            Action::ReadPrivacy => "read privacy budgets",
            Action::RequestFrames => "request or download store frames",
            Action::ReadTelemetry => "read telemetry",
        }
    }
}

/// `Ok` when `peer`'s role may perform `action`; a `PermissionDenied` naming the roles that may.
pub fn authorize(peer: &Peer, action: Action) -> Result<(), Status> {
    if action.roles().contains(&peer.role) {
        return Ok(());
    }
    let allowed: Vec<&str> = action.roles().iter().map(|r| r.as_str()).collect();
    Err(Status::permission_denied(format!(
        "{} certificate cannot {} (allowed: {})",
        peer.role.with_article(),
        action.describe(),
        allowed.join(", ")
    )))
}

/// The caller, if its role may perform `action`.
pub fn require_action<T>(request: &Request<T>, action: Action) -> Result<Peer, Status> {
    let peer = peer(request)?;
    authorize(&peer, action)?;
    Ok(peer)
}

/// Whether `role` sees store ids in the clear; the others see opaque tokens.
pub fn sees_store_ids(role: Role) -> bool {
    matches!(role, Role::Admin | Role::MlEngineer)
}

/// Interceptor for the admin service: refuses every caller without a staff certificate
/// (admin, ML engineer, operations) before the handler runs; each handler then checks its
/// [`Action`].
pub fn staff_only(request: Request<()>) -> Result<Request<()>, Status> {
    let peer = peer(&request)?;
    if matches!(peer.role, Role::Admin | Role::MlEngineer | Role::Operations) {
        Ok(request)
    } else {
        Err(Status::permission_denied(format!(
            "{} certificate cannot call the admin service (it needs an admin, ml-engineer or operations certificate)",
            peer.role.with_article()
        )))
    }
}

/// Interceptor for the node service.
pub fn node_only(request: Request<()>) -> Result<Request<()>, Status> {
    require(&request, Role::Node)?;
    Ok(request)
}

/// Interceptor for the privacy service.
pub fn privacy_officer_only(request: Request<()>) -> Result<Request<()>, Status> {
    require(&request, Role::PrivacyOfficer)?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_reads_aggregates_only() {
        let ops = Peer {
            role: Role::Operations,
            name: "olga".into(),
        };
        for action in [
            Action::ReadMetrics,
            Action::ReadRounds,
            Action::ReadModels,
            Action::ReadNodes,
            Action::ReadTelemetry,
        ] {
            assert!(authorize(&ops, action).is_ok(), "{action:?}");
        }
        for action in [
            Action::StartRound,
            Action::CancelRound,
            Action::ChangeRollout,
            Action::ReadQuarantine,
            Action::RequestFrames,
        ] {
            let denied = authorize(&ops, action)
                .err()
                .unwrap_or_else(|| panic!("operations may {action:?}"));
            assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{action:?}");
            assert!(denied.message().contains(action.describe()), "{denied}");
        }
        assert!(!sees_store_ids(Role::Operations));
        assert!(sees_store_ids(Role::MlEngineer));
    }

    #[test]
    fn nodes_and_privacy_officers_hold_no_staff_action() {
        for role in [Role::Node, Role::PrivacyOfficer] {
            let peer = Peer {
                role,
                name: "x".into(),
            };
            assert!(
                [Action::ReadMetrics, Action::StartRound, Action::ReadNodes]
                    .iter()
                    .all(|a| authorize(&peer, *a).is_err())
            );
        }
    }
}
