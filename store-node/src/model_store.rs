//! The installed model on disk (`<data_dir>/model/`) and the checks every version passes before
//! the node uses it: signature, hash, size, lineage, architecture, and weights that fit the
//! architecture's parameter layout.
//!
//! **Architecture Invariant:** a [`VerifiedModel`] can only be built by [`ModelStore::verify`],
//! so nothing unverified can be installed or served.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backroom_models::manifest::{Expectations, Manifest, VerifyError, verify_model};
use backroom_models::{ARCHITECTURE_ID, ShelfNetConfig};
use ed25519_dalek::VerifyingKey;
use tracing::warn;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The highest version ever installed completely: a node never accepts an older or equal one,
/// even after a crash part-way through an install left it with no loadable model.
pub const FLOOR_FILE: &str = "version-floor";

/// Why a model version was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ModelRefusal {
    #[error("{0}")]
    Verify(#[from] VerifyError),
    #[error("the coordinator sent version {received} when version {requested} was asked for")]
    WrongVersion { requested: u64, received: u64 },
    #[error("unusable architecture_config: {0}")]
    ArchitectureConfig(String),
    #[error("weights do not fit the architecture: {0}")]
    Weights(String),
    #[error(
        "manifest says {manifest} parameters, the architecture has {layout}, the weights hold {weights}"
    )]
    ParameterCount {
        manifest: u64,
        layout: usize,
        weights: usize,
    },
    #[error("weights file is {size} bytes, more than max_model_bytes {limit}")]
    TooLarge { size: u64, limit: u64 },
}

/// Errors reading or writing the model directory.
#[derive(Debug, thiserror::Error)]
pub enum ModelStoreError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installed model in {dir} refused: {reason}")]
    Refused {
        dir: PathBuf,
        #[source]
        reason: ModelRefusal,
    },
}

/// A model version that passed every check, ready for inference and training.
#[derive(Debug)]
pub struct InstalledModel {
    pub manifest: Manifest,
    pub config: ShelfNetConfig,
    /// Flat parameters in the canonical order.
    pub params: Arc<Vec<f32>>,
}

impl InstalledModel {
    pub fn version(&self) -> u64 {
        self.manifest.version
    }
}

/// A verified version with the exact bytes that were verified (for writing to disk).
#[derive(Debug)]
pub struct VerifiedModel {
    pub model: InstalledModel,
    manifest_bytes: Vec<u8>,
    signature: Vec<u8>,
    weights: Vec<u8>,
}

/// The model directory and the trust settings used to check what goes in and comes out of it.
#[derive(Clone, Debug)]
pub struct ModelStore {
    dir: PathBuf,
    trusted_key: VerifyingKey,
    lineage: String,
    max_model_bytes: u64,
}

impl ModelStore {
    pub fn new(
        dir: PathBuf,
        trusted_key: VerifyingKey,
        lineage: String,
        max_model_bytes: u64,
    ) -> Self {
        Self {
            dir,
            trusted_key,
            lineage,
            max_model_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn trusted_key(&self) -> &VerifyingKey {
        &self.trusted_key
    }

    /// Runs every check on a version (blocking: hashes and parses the weights).
    /// `now_unix_ms = None` skips the expiry check (the caller warns instead).
    pub fn verify(
        &self,
        manifest_bytes: Vec<u8>,
        signature: Vec<u8>,
        weights: Vec<u8>,
        installed_version: u64,
        now_unix_ms: Option<i64>,
    ) -> Result<VerifiedModel, ModelRefusal> {
        let size = weights.len() as u64;
        if size > self.max_model_bytes {
            return Err(ModelRefusal::TooLarge {
                size,
                limit: self.max_model_bytes,
            });
        }
        let expect = Expectations {
            lineage: &self.lineage,
            architecture: ARCHITECTURE_ID,
            installed_version,
            now_unix_ms: now_unix_ms.unwrap_or(i64::MIN),
        };
        let manifest = verify_model(
            &manifest_bytes,
            &signature,
            &weights,
            &self.trusted_key,
            &expect,
        )?;
        let config: ShelfNetConfig =
            serde_json::from_value(manifest.architecture_config.clone())
                .map_err(|e| ModelRefusal::ArchitectureConfig(e.to_string()))?;
        config
            .validate()
            .map_err(|e| ModelRefusal::ArchitectureConfig(e.to_string()))?;
        if !config.is_shelf_classifier() {
            return Err(ModelRefusal::ArchitectureConfig(format!(
                "the model takes {}x{}x{} images into {} classes; this node classifies \
                 3x64x64 shelf crops into 2",
                config.input_channels, config.image_size, config.image_size, config.num_classes
            )));
        }
        let layout = backroom_models::parameter_layout(&config);
        let layout_parameters = backroom_models::num_parameters(&config);
        let params = backroom_models::from_safetensors(&layout, &weights)
            .map_err(|e| ModelRefusal::Weights(e.to_string()))?;
        if params.len() != layout_parameters || manifest.num_parameters != layout_parameters as u64
        {
            return Err(ModelRefusal::ParameterCount {
                manifest: manifest.num_parameters,
                layout: layout_parameters,
                weights: params.len(),
            });
        }
        Ok(VerifiedModel {
            model: InstalledModel {
                manifest,
                config,
                params: Arc::new(params),
            },
            manifest_bytes,
            signature,
            weights,
        })
    }

    /// Loads and re-verifies the installed version (blocking). `Ok(None)` when nothing is
    /// installed. An expired manifest is only a warning here: the node keeps serving the last
    /// good version until a newer one arrives.
    pub fn load_installed(
        &self,
        now_unix_ms: i64,
    ) -> Result<Option<InstalledModel>, ModelStoreError> {
        let manifest_path = self.dir.join(MANIFEST_FILE);
        let signature_path = self.dir.join(SIGNATURE_FILE);
        let weights_path = self.dir.join(WEIGHTS_FILE);
        if !manifest_path.exists() && !weights_path.exists() && !signature_path.exists() {
            return Ok(None);
        }
        let weights_len = std::fs::metadata(&weights_path)
            .map_err(|source| io_error("inspect", &weights_path, source))?
            .len();
        if weights_len > self.max_model_bytes {
            return Err(self.refused(ModelRefusal::TooLarge {
                size: weights_len,
                limit: self.max_model_bytes,
            }));
        }
        let manifest_bytes = read(&manifest_path)?;
        let signature = read(&signature_path)?;
        let weights = read(&weights_path)?;
        // The files on disk must not be older than the last version installed.
        let floor = self.rollback_floor();
        let verified = self
            .verify(
                manifest_bytes,
                signature,
                weights,
                floor.saturating_sub(1),
                None,
            )
            .map_err(|reason| self.refused(reason))?;
        let manifest = &verified.model.manifest;
        if manifest.expires_unix_ms <= now_unix_ms {
            warn!(
                version = manifest.version,
                expires_unix_ms = manifest.expires_unix_ms,
                "installed model has expired; serving it until a newer version is installed"
            );
        }
        Ok(Some(verified.model))
    }

    /// Writes a verified version (blocking): each file goes to a temporary name, is synced, and is
    /// renamed over the old one; the directory is synced last. A crash part-way leaves files that
    /// fail re-verification, so the node starts with no model rather than a mixed one.
    pub fn install(&self, verified: VerifiedModel) -> Result<InstalledModel, ModelStoreError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|source| io_error("create", &self.dir, source))?;
        let files: [(&str, &[u8]); 3] = [
            (WEIGHTS_FILE, &verified.weights),
            (SIGNATURE_FILE, &verified.signature),
            (MANIFEST_FILE, &verified.manifest_bytes),
        ];
        let mut staged = Vec::with_capacity(files.len());
        for (name, bytes) in files {
            let final_path = self.dir.join(name);
            let temp_path = self.dir.join(format!(".{name}.tmp"));
            write_synced(&temp_path, bytes)?;
            staged.push((temp_path, final_path));
        }
        for (temp_path, final_path) in staged {
            std::fs::rename(&temp_path, &final_path)
                .map_err(|source| io_error("rename into place", &final_path, source))?;
        }
        sync_dir(&self.dir)?;
        let version = verified.model.version();
        if version > self.rollback_floor() {
            let floor_path = self.dir.join(FLOOR_FILE);
            let temp_path = self.dir.join(format!(".{FLOOR_FILE}.tmp"));
            write_synced(&temp_path, version.to_string().as_bytes())?;
            std::fs::rename(&temp_path, &floor_path)
                .map_err(|source| io_error("rename into place", &floor_path, source))?;
            sync_dir(&self.dir)?;
        }
        Ok(verified.model)
    }

    /// The highest version this node ever installed completely (0 if none). A missing or
    /// unreadable floor file counts as 0 with a warning.
    pub fn rollback_floor(&self) -> u64 {
        let path = self.dir.join(FLOOR_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(path = %path.display(), "unreadable rollback floor; treating it as 0");
                0
            }),
            Err(_) => 0,
        }
    }

    fn refused(&self, reason: ModelRefusal) -> ModelStoreError {
        ModelStoreError::Refused {
            dir: self.dir.clone(),
            reason,
        }
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> ModelStoreError {
    ModelStoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelStoreError> {
    std::fs::read(path).map_err(|source| io_error("read", path, source))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ModelStoreError> {
    let mut file =
        std::fs::File::create(path).map_err(|source| io_error("create", path, source))?;
    file.write_all(bytes)
        .map_err(|source| io_error("write", path, source))?;
    file.sync_all()
        .map_err(|source| io_error("sync", path, source))
}

fn sync_dir(dir: &Path) -> Result<(), ModelStoreError> {
    // Directories can be opened and synced on Unix; elsewhere this is best effort.
    match std::fs::File::open(dir) {
        Ok(handle) => match handle.sync_all() {
            Ok(()) => Ok(()),
            Err(source) if cfg!(unix) => Err(io_error("sync", dir, source)),
            Err(_) => Ok(()),
        },
        Err(source) if cfg!(unix) => Err(io_error("open", dir, source)),
        Err(_) => Ok(()),
    }
}
