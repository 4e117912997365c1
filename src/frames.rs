//! The requester's side of a frame request: the X25519 key pair the export is sealed to, and
//! downloading and opening the sealed export.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use backroom_proto::v1 as pb;
use backroom_proto::v1::frame_export_chunk::Kind;
use crypto_box::SecretKey;
use crypto_box::aead::OsRng;
use prost::Message;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::client::AdminClient;

/// Creates a key pair: the secret key (hex) in `secret_path` with mode 0600, the public key
/// (hex) in `<secret_path>.pub`. Refuses to overwrite. Returns the public key.
pub fn keygen(secret_path: &Path) -> anyhow::Result<[u8; 32]> {
    let secret = SecretKey::generate(&mut OsRng);
    let public = secret.public_key().to_bytes();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut text = hex::encode(secret.to_bytes());
    text.push('\n');
    let written = options
        .open(secret_path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    text.zeroize();
    written.with_context(|| format!("cannot create {}", secret_path.display()))?;
    let public_path = public_key_path(secret_path);
    std::fs::write(&public_path, format!("{}\n", hex::encode(public)))
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    Ok(public)
}

/// `<secret_path>.pub`.
pub fn public_key_path(secret_path: &Path) -> PathBuf {
    let mut name = secret_path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn read_key(path: &Path, what: &str) -> anyhow::Result<[u8; 32]> {
    let mut text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let decoded = hex::decode(text.trim());
    text.zeroize();
    let mut bytes = decoded
        .ok()
        .filter(|b| b.len() == 32)
        .with_context(|| format!("{} does not hold a {what} (64 hex digits)", path.display()))?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes);
    bytes.zeroize();
    Ok(key)
}

/// Reads a public key file written by [`keygen`].
pub fn read_public_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    read_key(path, "public key")
}

/// Downloads the sealed export of `request_id` and opens it with the secret key in
/// `secret_path`.
pub async fn download(
    admin: &mut AdminClient,
    request_id: &str,
    secret_path: &Path,
) -> anyhow::Result<pb::FrameExport> {
    let mut stream = admin
        .download_frames(pb::GetFrameRequestRequest {
            request_id: request_id.to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("coordinator refused: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    let mut sealed = Vec::new();
    let mut declared = None;
    let mut digest = None;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("download broke: {}", s.message()))?
    {
        match chunk.kind {
            Some(Kind::Header(header)) => declared = Some(header.total_bytes),
            Some(Kind::Data(data)) => sealed.extend_from_slice(&data),
            Some(Kind::Trailer(trailer)) => digest = Some(trailer.sha256),
            None => {}
        }
    }
    anyhow::ensure!(
        declared == Some(sealed.len() as u64),
        "the download is incomplete ({} bytes, {declared:?} declared)",
        sealed.len()
    );
    anyhow::ensure!(
        digest.as_deref() == Some(Sha256::digest(&sealed).as_slice()),
        "the download's SHA-256 does not match"
    );
    let mut key = read_key(secret_path, "secret key")?;
    let secret = SecretKey::from(key);
    key.zeroize();
    let plain = secret
        .unseal(&sealed)
        .map_err(|_| anyhow::anyhow!("the export does not open with this key (is it the key whose public half was given in the request?)"))?;
    let export = pb::FrameExport::decode(plain.as_slice())
        .context("the opened export is not a frame export")?;
    anyhow::ensure!(
        export.request_id == request_id,
        "the export is for request {}, not {request_id}",
        export.request_id
    );
    Ok(export)
}
