//! Admin connections to a coordinator over mutually authenticated TLS.

use std::path::Path;

use anyhow::Context;
use backroom_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub type AdminClient = AdminServiceClient<Channel>;

/// Opens a TLS channel with the client certificate of `bundle_dir` (`ca.pem`, `cert.pem`,
/// `key.pem`).
pub async fn connect(url: &str, server_name: &str, bundle_dir: &Path) -> anyhow::Result<Channel> {
    let read = |name: &str| {
        let path = bundle_dir.join(name);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("cert.pem")?, read("key.pem")?))
        .domain_name(server_name);
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid coordinator URL {url:?}"))?
        .tls_config(tls)
        .context("invalid TLS configuration")?
        .connect_timeout(std::time::Duration::from_secs(10));
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the coordinator at {url}"))
}

/// An admin client for the coordinator at `url`.
pub async fn admin(url: &str, server_name: &str, bundle_dir: &Path) -> anyhow::Result<AdminClient> {
    let channel = connect(url, server_name, bundle_dir).await?;
    Ok(AdminServiceClient::new(channel).max_decoding_message_size(8 << 20))
}

pub type PrivacyClient = backroom_proto::v1::privacy_service_client::PrivacyServiceClient<Channel>;

/// A privacy-officer client for the coordinator at `url`.
pub async fn privacy(
    url: &str,
    server_name: &str,
    bundle_dir: &Path,
) -> anyhow::Result<PrivacyClient> {
    let channel = connect(url, server_name, bundle_dir).await?;
    Ok(PrivacyClient::new(channel))
}
