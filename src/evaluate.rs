//! Loading a published version from a coordinator's data directory, verified exactly as a node
//! verifies it, and measuring its accuracy on held-out data.

use std::path::{Path, PathBuf};

use anyhow::Context;
use backroom_models::manifest::Expectations;
use backroom_models::verify::{
    OwnedParts, Refusal, SignedManifestFile, Trust, VerifiedRelease, verify_release,
};
use backroom_models::{ARCHITECTURE_ID, ShelfNetConfig};
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;

/// The manifest and signature files of one version in a coordinator's data directory.
pub fn version_files(coordinator_dir: &Path, lineage: &str, version: u64) -> [PathBuf; 2] {
    let dir = coordinator_dir.join("models").join(lineage);
    [
        dir.join(format!("v{version}.manifest.json")),
        dir.join(format!("v{version}.manifest.sig")),
    ]
}

/// Where a version's weights are in a coordinator's data directory: the local blob store's
/// blob named by the manifest's `weights_sha256` (or, for a version published before the blob
/// store, `models/<lineage>/v<N>.safetensors`).
pub fn weights_file(
    coordinator_dir: &Path,
    lineage: &str,
    version: u64,
    manifest: &[u8],
) -> anyhow::Result<PathBuf> {
    let legacy = coordinator_dir
        .join("models")
        .join(lineage)
        .join(format!("v{version}.safetensors"));
    if legacy.exists() {
        return Ok(legacy);
    }
    let parsed = backroom_models::manifest::Manifest::from_bytes(manifest)
        .map_err(|e| anyhow::anyhow!("{lineage} v{version}: unreadable manifest: {e}"))?;
    let blobs = coordinator_dir.join("blobs");
    let path = backroom_coordinator::blobs::local_blob_path(&blobs, &parsed.weights_sha256);
    anyhow::ensure!(
        path.exists(),
        "the weights of {lineage} v{version} (SHA-256 {}) are not in {} (a coordinator with an \
         s3:// blob_store keeps them in its bucket)",
        parsed.weights_sha256,
        blobs.display()
    );
    Ok(path)
}

/// The coordinator's model root public key (what nodes are enrolled with).
pub fn root_key_file(coordinator_dir: &Path) -> PathBuf {
    coordinator_dir.join("pki").join("model-root.pub.pem")
}

pub fn load_verifying_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 public key: {e}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A version's signed parts and weights as a node would receive them: the manifest and its
/// signature as published, with the coordinator's current key set.
pub fn coordinator_release(
    coordinator_dir: &Path,
    lineage: &str,
    version: u64,
) -> anyhow::Result<(OwnedParts, Vec<u8>)> {
    let [manifest_path, sig_path] = version_files(coordinator_dir, lineage, version);
    let pki = coordinator_dir.join("pki");
    let parts = OwnedParts {
        manifest: read(&manifest_path)?,
        signature: read(&sig_path)?,
        key_set: read(&pki.join("model-keyset.json"))?,
        key_set_signature: read(&pki.join("model-keyset.sig"))?,
    };
    let weights_path = weights_file(coordinator_dir, lineage, version, &parts.manifest)?;
    Ok((parts, read(&weights_path)?))
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Exactly a node's checks on a release (a node with nothing installed and no key set held,
/// unless `installed_version` says otherwise). `lineage = None` expects the manifest's own.
pub fn verify_parts(
    parts: &OwnedParts,
    weights: &[u8],
    root: &VerifyingKey,
    lineage: Option<&str>,
    installed_version: u64,
) -> Result<VerifiedRelease, Refusal> {
    let claimed = backroom_models::manifest::Manifest::from_bytes(&parts.manifest)
        .map(|m| m.lineage)
        .unwrap_or_default();
    let expect = Expectations {
        lineage: lineage.unwrap_or(&claimed),
        architecture: ARCHITECTURE_ID,
        installed_version,
        now_unix_ms: now_unix_ms(),
    };
    verify_release(
        Trust { root, held: None },
        parts.as_parts(),
        weights,
        &expect,
    )
}

/// Reads and verifies a version exactly as a node does, returning its parameters.
pub fn load_verified_params(
    coordinator_dir: &Path,
    lineage: &str,
    version: u64,
    root: &VerifyingKey,
) -> anyhow::Result<Vec<f32>> {
    let (parts, weights) = coordinator_release(coordinator_dir, lineage, version)?;
    let verified = verify_parts(&parts, &weights, root, Some(lineage), 0)
        .with_context(|| format!("version {version} of {lineage} does not verify"))?;
    let layout = backroom_models::parameter_layout(&verified.config);
    Ok(backroom_models::from_safetensors(&layout, &weights)?)
}

/// Where `export_version` wrote a version's files.
#[derive(Debug, serde::Serialize)]
pub struct ExportedFiles {
    pub manifest: PathBuf,
    pub weights: PathBuf,
    pub root: PathBuf,
}

/// Writes a version's signed manifest (with the current key set), its weights and the trusted
/// root public key into `out_dir`, as files `backroom models verify` checks.
pub fn export_version(
    coordinator_dir: &Path,
    lineage: &str,
    version: u64,
    out_dir: &Path,
) -> anyhow::Result<ExportedFiles> {
    let [manifest_path, ..] = version_files(coordinator_dir, lineage, version);
    if !manifest_path.exists() {
        anyhow::bail!(
            "{} has no version {version} of lineage {lineage:?} (no {})",
            coordinator_dir.display(),
            manifest_path.display()
        );
    }
    let (parts, weights) = coordinator_release(coordinator_dir, lineage, version)?;
    let file = SignedManifestFile::new(parts.as_parts())?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let files = ExportedFiles {
        manifest: out_dir.join(format!("{lineage}-v{version}.manifest.json")),
        weights: out_dir.join(format!("{lineage}-v{version}.safetensors")),
        root: out_dir.join("model-root.pub.pem"),
    };
    let root = read(&root_key_file(coordinator_dir))?;
    for (path, bytes) in [
        (&files.manifest, file.to_json().into_bytes()),
        (&files.weights, weights),
        (&files.root, root),
    ] {
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(files)
}

/// Accuracy and mean cross-entropy of `params` on the held-out test split of the synthetic
/// shelf world, evaluated on the CPU whatever backend trained them.
pub fn held_out(
    params: &[f32],
    world_seed: u64,
    samples: usize,
) -> anyhow::Result<backroom_models::Assessment> {
    let test = backroom_datasets::generate_test_split(world_seed, samples);
    let device = backroom_models::select_device(backroom_models::BackendChoice::Cpu)?;
    Ok(backroom_models::assess(
        &device,
        &ShelfNetConfig::new(),
        params,
        &test.images,
        &test.labels,
    )?)
}
