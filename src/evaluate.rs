//! Loading a published version from a coordinator's data directory, verified exactly as a node
//! verifies it, and measuring its accuracy on held-out data.

use std::path::{Path, PathBuf};

use anyhow::Context;
use backroom_models::manifest::{Expectations, verify_model};
use backroom_models::{ARCHITECTURE_ID, ShelfNetConfig};
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;

/// Files of one version in a coordinator's data directory.
pub fn version_files(coordinator_dir: &Path, lineage: &str, version: u64) -> [PathBuf; 3] {
    let dir = coordinator_dir.join("models").join(lineage);
    [
        dir.join(format!("v{version}.manifest.json")),
        dir.join(format!("v{version}.manifest.sig")),
        dir.join(format!("v{version}.safetensors")),
    ]
}

pub fn load_verifying_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 public key: {e}", path.display()))
}

/// Reads and verifies (signature, hash, lineage, architecture, expiry) a version's parameters.
pub fn load_verified_params(
    coordinator_dir: &Path,
    lineage: &str,
    version: u64,
    trusted_key: &VerifyingKey,
) -> anyhow::Result<Vec<f32>> {
    let [manifest_path, sig_path, weights_path] = version_files(coordinator_dir, lineage, version);
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let manifest = read(&manifest_path)?;
    let signature = read(&sig_path)?;
    let weights = read(&weights_path)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    verify_model(
        &manifest,
        &signature,
        &weights,
        trusted_key,
        &Expectations {
            lineage,
            architecture: ARCHITECTURE_ID,
            installed_version: 0,
            now_unix_ms: now,
        },
    )
    .with_context(|| format!("version {version} of {lineage} does not verify"))?;
    let layout = backroom_models::parameter_layout(&ShelfNetConfig::new());
    Ok(backroom_models::from_safetensors(&layout, &weights)?)
}

/// Accuracy of `params` on the held-out test split of the synthetic shelf world.
pub fn held_out_accuracy(params: &[f32], world_seed: u64, samples: usize) -> anyhow::Result<f32> {
    let test = backroom_datasets::generate_test_split(world_seed, samples);
    let device = backroom_models::select_device(backroom_models::BackendChoice::Cpu)?;
    Ok(backroom_models::evaluate(
        &device,
        &ShelfNetConfig::new(),
        params,
        &test.images,
        &test.labels,
    )?)
}
