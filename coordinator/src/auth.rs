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
            "{} {} certificate cannot call this service (it needs {} {role} certificate)",
            article(peer.role),
            peer.role,
            article(role)
        )))
    }
}

fn article(role: Role) -> &'static str {
    if role == Role::Admin { "an" } else { "a" }
}

/// Interceptor for the admin service: refuses every non-admin caller before the handler runs.
pub fn admin_only(request: Request<()>) -> Result<Request<()>, Status> {
    require(&request, Role::Admin)?;
    Ok(request)
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
