//! The model registry: versions as safetensors blobs (in the [blob store](crate::blobs)) plus
//! signed manifests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backroom_models::manifest::{
    DpParameters, MANIFEST_FORMAT, Manifest, sha256_hex, sign_manifest,
};
use backroom_models::{ARCHITECTURE_ID, ShelfNetConfig, TensorSpec};

use crate::blobs::BlobStore;
use crate::error::{CoordinatorError, Result};
use crate::identity::PkiPaths;
use crate::store::{Store, VersionRow};

/// Signs and stores model versions of the ShelfNet architecture.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Weights and the server optimiser's moments.
    blobs: BlobStore,
    /// Each version's manifest and signature, as files for tools reading the data directory
    /// (the database holds both too).
    models_dir: PathBuf,
    /// Where the signing key and key set are re-read from for every publication.
    pki: PkiPaths,
    expiry_ms: i64,
    model_config: ShelfNetConfig,
    layout: Vec<TensorSpec>,
    /// The last key set read, with the stamps of the files it was read from.
    key_set_cache: std::sync::Mutex<Option<(KeySetStamp, backroom_models::keys::SignedKeySet)>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("models_dir", &self.inner.models_dir)
            .field("blobs", &self.inner.blobs)
            .finish_non_exhaustive()
    }
}

/// Inode, size and modification time of the key set's two files (`None` when either cannot be
/// read). The files are replaced by rename, so a rewrite changes the inode even within one tick
/// of a coarse file clock.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeySetStamp([(u64, u64, std::time::SystemTime); 2]);

impl KeySetStamp {
    fn of(set: &Path, signature: &Path) -> Option<Self> {
        let stamp = |path: &Path| {
            let meta = std::fs::metadata(path).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Some((inode, meta.len(), meta.modified().ok()?))
        };
        Some(KeySetStamp([stamp(set)?, stamp(signature)?]))
    }
}

/// What a new version records about the round that made it.
#[derive(Clone, Debug)]
pub struct Provenance {
    pub round_id: String,
    pub parent_version: u64,
    pub dp: Option<DpParameters>,
    /// The lineage's ε including this version, at `delta` (`None`: infinite or not private).
    pub epsilon_spent: Option<f64>,
    pub delta: Option<f64>,
    /// The older version whose weights a rollback version carries.
    pub rollback_of: Option<u64>,
}

impl Registry {
    pub fn new(
        store: Store,
        blobs: BlobStore,
        models_dir: PathBuf,
        pki: PkiPaths,
        expiry_secs: u64,
        model_config: ShelfNetConfig,
    ) -> Self {
        let layout = backroom_models::parameter_layout(&model_config);
        Self {
            inner: Arc::new(Inner {
                store,
                blobs,
                models_dir,
                pki,
                expiry_ms: i64::try_from(expiry_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
                model_config,
                layout,
                key_set_cache: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Where weights and update blobs are kept.
    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    pub fn num_parameters(&self) -> usize {
        self.inner.layout.iter().map(TensorSpec::numel).sum()
    }

    /// The network every version of this registry's lineage has.
    pub fn model_config(&self) -> &ShelfNetConfig {
        &self.inner.model_config
    }

    /// Publishes version 1 of `lineage` (freshly initialised weights) if it has no version yet.
    /// A lineage that exists must have the configured network: a different one is refused
    /// (its deltas and weights would not fit), naming both.
    pub async fn ensure_initial(&self, lineage: &str, seed: u64) -> Result<VersionRow> {
        if let Some(row) = self.inner.store.latest_version(lineage).await? {
            let manifest = Manifest::from_bytes(&row.manifest)
                .map_err(|e| CoordinatorError::Internal(format!("stored manifest: {e}")))?;
            let published: ShelfNetConfig =
                serde_json::from_value(manifest.architecture_config.clone()).map_err(|e| {
                    CoordinatorError::Internal(format!(
                        "lineage {lineage:?} v{}: unreadable architecture configuration: {e}",
                        row.version
                    ))
                })?;
            if published != self.inner.model_config {
                return Err(CoordinatorError::FailedPrecondition(format!(
                    "lineage {lineage:?} was published with the network {} but the \
                     configuration's [model] is {}; a lineage keeps its network (name a new \
                     lineage to train another)",
                    manifest.architecture_config,
                    serde_json::to_value(&self.inner.model_config).unwrap_or_default()
                )));
            }
            return Ok(row);
        }
        let this = self.clone();
        let lineage_owned = lineage.to_owned();
        let row = tokio::task::spawn_blocking(move || {
            let params = backroom_models::init_parameters(&this.inner.model_config, seed)?;
            let provenance = Provenance {
                round_id: String::new(),
                parent_version: 0,
                dp: None,
                epsilon_spent: None,
                delta: None,
                rollback_of: None,
            };
            this.write_version(&lineage_owned, 1, &provenance, &params)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("initialisation task failed: {e}")))??;
        self.inner.store.insert_version(&row).await?;
        self.inner
            .store
            .advance_stable(lineage, 1, "initial", now_unix_ms())
            .await?;
        tracing::info!(lineage, version = 1, "published initial model version");
        Ok(row)
    }

    /// The current key set as nodes receive it (blocking: reads two small files).
    /// Blocking (reads files): call from `spawn_blocking`. Every long poll serves it, so the set
    /// is read and its root signature checked again only when its files change (size and
    /// modification time, as `backroom keys rotate` rewrites them).
    pub fn key_set(&self) -> Result<backroom_models::keys::SignedKeySet> {
        let pki = &self.inner.pki;
        let stamp = KeySetStamp::of(&pki.key_set(), &pki.key_set_signature());
        if let Some(stamp) = &stamp {
            let cache = self
                .inner
                .key_set_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some((cached_stamp, set)) = cache.as_ref()
                && cached_stamp == stamp
            {
                return Ok(set.clone());
            }
        }
        let set = crate::signing_keys::load_set(pki)
            .map_err(|e| CoordinatorError::Internal(format!("cannot serve the key set: {e}")))?;
        if let Some(stamp) = stamp {
            *self
                .inner
                .key_set_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((stamp, set.clone()));
        }
        Ok(set)
    }

    /// Reads a stored version's weights after checking them against their recorded hash.
    pub async fn load_weights(&self, row: &VersionRow) -> Result<Vec<u8>> {
        let bytes = self.inner.blobs.get(&row.weights_path).await?;
        Self::check_weights(row, &bytes)?;
        Ok(bytes)
    }

    fn check_weights(row: &VersionRow, bytes: &[u8]) -> Result<()> {
        let found = sha256_hex(bytes);
        if found != row.weights_sha256 {
            return Err(CoordinatorError::Internal(format!(
                "weights {} of {} v{} have SHA-256 {found}, the registry says {}",
                row.weights_path, row.lineage, row.version, row.weights_sha256
            )));
        }
        Ok(())
    }

    /// Reads a stored version's parameters after checking the weights against their recorded
    /// hash. Blocking: call from `spawn_blocking`.
    pub fn load_params(&self, row: &VersionRow) -> Result<Vec<f32>> {
        let bytes = self.inner.blobs.get_blocking(&row.weights_path)?;
        Self::check_weights(row, &bytes)?;
        Ok(backroom_models::from_safetensors(
            &self.inner.layout,
            &bytes,
        )?)
    }

    /// Where the server optimiser's moments after `version` of `lineage` are kept: two blobs
    /// named by lineage and version, first and second moment, in the parameters' own
    /// safetensors layout.
    fn moments_names(lineage: &str, version: u64) -> [String; 2] {
        ["m", "v"].map(|which| format!("moments/{lineage}/v{version}-{which}.safetensors"))
    }

    /// The files a coordinator kept them in before the blob store (read if present).
    fn legacy_moments_paths(&self, lineage: &str, version: u64) -> [PathBuf; 2] {
        let dir = self.inner.models_dir.join(lineage);
        ["m", "v"].map(|which| dir.join(format!("v{version}.server-{which}.safetensors")))
    }

    /// The server optimiser's moments saved with `version`, or `None` when that version was not
    /// made by FedAdam/FedYogi (the next such round starts from fresh moments). A blob that is
    /// present but unreadable, or only one of the two, is an error: a corrupted optimiser state
    /// must not silently restart or steer the weights. Blocking: call from `spawn_blocking`.
    pub fn load_moments(
        &self,
        lineage: &str,
        version: u64,
    ) -> Result<Option<crate::strategy::Moments>> {
        let names = Self::moments_names(lineage, version);
        let legacy = self.legacy_moments_paths(lineage, version);
        let read = |name: &str, legacy: &Path| -> Result<Option<Vec<f32>>> {
            let bytes = match self.inner.blobs.get_named_blocking(name)? {
                Some(bytes) => bytes,
                None => match std::fs::read(legacy) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(CoordinatorError::io(
                            format!("cannot read {}", legacy.display()),
                            e,
                        ));
                    }
                },
            };
            backroom_models::from_safetensors(&self.inner.layout, &bytes)
                .map(Some)
                .map_err(|e| {
                    CoordinatorError::Internal(format!(
                        "server optimiser state {name} in {} is unreadable ({e}); remove both \
                         moment blobs of v{version} to restart the moments",
                        self.inner.blobs.location()
                    ))
                })
        };
        match (read(&names[0], &legacy[0])?, read(&names[1], &legacy[1])?) {
            (Some(first), Some(second)) => Ok(Some(crate::strategy::Moments { first, second })),
            (None, None) => Ok(None),
            _ => Err(CoordinatorError::Internal(format!(
                "only one of the server optimiser's two moment blobs exists for {lineage} \
                 v{version}; remove it to restart the moments"
            ))),
        }
    }

    /// Saves the server optimiser's moments after `version` (durably, before the version is
    /// published). Blocking: call from `spawn_blocking`.
    pub fn write_moments(
        &self,
        lineage: &str,
        version: u64,
        moments: &crate::strategy::Moments,
    ) -> Result<()> {
        let names = Self::moments_names(lineage, version);
        for (name, values) in names.iter().zip([&moments.first, &moments.second]) {
            let bytes = backroom_models::to_safetensors(&self.inner.layout, values)?;
            self.inner.blobs.put_named_blocking(name, bytes)?;
        }
        Ok(())
    }

    /// Writes the weights of a new version and signs its manifest. The caller records the
    /// returned row in the database. Blocking: call from `spawn_blocking`.
    pub fn write_version(
        &self,
        lineage: &str,
        version: u64,
        provenance: &Provenance,
        params: &[f32],
    ) -> Result<VersionRow> {
        // Read before anything is written: a rotated key is picked up here, and a key the
        // current key set does not trust stops the publication with a clear error.
        let (signing_key, _) = crate::signing_keys::load_current(&self.inner.pki)
            .map_err(|e| CoordinatorError::Internal(format!("cannot sign: {e}")))?;
        let weights = backroom_models::to_safetensors(&self.inner.layout, params)?;
        let dir = self.inner.models_dir.join(lineage);
        create_dir_durably(&dir)?;
        let weights_sha256 = sha256_hex(&weights);
        let weights_size = weights.len() as u64;
        let reference = self.inner.blobs.put_blocking(weights)?;

        let now = now_unix_ms();
        let architecture_config = serde_json::to_value(&self.inner.model_config)
            .map_err(|e| CoordinatorError::Internal(format!("model config: {e}")))?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            lineage: lineage.to_owned(),
            version,
            parent_version: provenance.parent_version,
            round_id: provenance.round_id.clone(),
            architecture: ARCHITECTURE_ID.to_owned(),
            architecture_config,
            num_parameters: params.len() as u64,
            weights_sha256,
            weights_size,
            dp: provenance.dp.clone(),
            epsilon_spent: provenance.epsilon_spent,
            delta: provenance.delta,
            created_unix_ms: now,
            expires_unix_ms: now.saturating_add(self.inner.expiry_ms),
            rollback_of: provenance.rollback_of,
        };
        let manifest_bytes = manifest.to_bytes();
        let signature = sign_manifest(&manifest_bytes, &signing_key);
        write_durably(
            &dir.join(format!("v{version}.manifest.json")),
            &manifest_bytes,
        )?;
        write_durably(&dir.join(format!("v{version}.manifest.sig")), &signature)?;
        Ok(VersionRow {
            lineage: lineage.to_owned(),
            version,
            parent_version: provenance.parent_version,
            round_id: provenance.round_id.clone(),
            weights_sha256: manifest.weights_sha256,
            weights_path: reference,
            manifest: manifest_bytes,
            signature: signature.to_vec(),
            created_unix_ms: now,
        })
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so a crash leaves either
/// the old file or the whole new one.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let suffix: u64 = rand::random();
    let tmp = path.with_extension(format!("{suffix:016x}.tmp"));
    let context = |what: &str| format!("cannot {what} {}", tmp.display());
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| CoordinatorError::io(context("create"), e))?;
    file.write_all(bytes)
        .map_err(|e| CoordinatorError::io(context("write"), e))?;
    file.sync_all()
        .map_err(|e| CoordinatorError::io(context("sync"), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| CoordinatorError::io(format!("cannot rename to {}", path.display()), e))?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Creates `dir` (and missing parents) and fsyncs each parent of a created directory, so the new
/// directory entries survive a power loss.
pub fn create_dir_durably(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(d) = current {
        if d.exists() {
            break;
        }
        missing.push(d.to_owned());
        current = d.parent();
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CoordinatorError::io(format!("cannot create {}", dir.display()), e))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent()
            && let Ok(handle) = std::fs::File::open(parent)
        {
            handle.sync_all().map_err(|e| {
                CoordinatorError::io(format!("cannot sync {}", parent.display()), e)
            })?;
        }
    }
    Ok(())
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
