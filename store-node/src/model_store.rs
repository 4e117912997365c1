//! The installed model on disk (`<data_dir>/model/`) and the checks every version passes before
//! the node uses it: signature, hash, size, lineage, architecture, and weights that fit the
//! architecture's parameter layout.
//!
//! **Architecture Invariant:** a [`VerifiedModel`] can only be built by [`ModelStore::verify`],
//! so nothing unverified can be installed or served.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backroom_models::ARCHITECTURE_ID;
use backroom_models::ShelfNetConfig;
use backroom_models::keys::SignedKeySet;
use backroom_models::manifest::{Expectations, Manifest};
use backroom_models::verify::{Refusal, ReleaseParts, Trust, verify_release};
use ed25519_dalek::VerifyingKey;
use tracing::warn;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The newest key set this node accepted (and its root signature): never replaced by an older
/// one, so a replayed set from before a revocation changes nothing.
pub const KEY_SET_FILE: &str = "keyset.json";
pub const KEY_SET_SIGNATURE_FILE: &str = "keyset.sig";
/// The version installed before the current one, kept whole for fallback.
pub const PREVIOUS_DIR: &str = "previous";
/// The highest version ever installed completely: a node never accepts an older or equal one,
/// even after a crash part-way through an install left it with no loadable model.
pub const FLOOR_FILE: &str = "version-floor";

/// Why a model version was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ModelRefusal {
    #[error(transparent)]
    Release(#[from] Refusal),
    #[error("the coordinator sent version {received} when version {requested} was asked for")]
    WrongVersion { requested: u64, received: u64 },
    #[error("weights file is {size} bytes, more than max_model_bytes {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("no key set is stored beside the installed model")]
    NoKeySet,
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
    /// Id of the key that signed the manifest.
    pub signed_by: String,
    manifest_bytes: Vec<u8>,
    signature: Vec<u8>,
    weights: Vec<u8>,
    /// Set when the release came with a key set newer than the held one.
    new_key_set: Option<SignedKeySet>,
}

/// A release as downloaded: its signed parts and the weights.
#[derive(Debug)]
pub struct Release {
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub key_set: Vec<u8>,
    pub key_set_signature: Vec<u8>,
    pub weights: Vec<u8>,
}

impl Release {
    fn parts(&self) -> ReleaseParts<'_> {
        ReleaseParts {
            manifest: &self.manifest,
            signature: &self.signature,
            key_set: &self.key_set,
            key_set_signature: &self.key_set_signature,
        }
    }
}

/// The model directory and the trust settings used to check what goes in and comes out of it.
#[derive(Clone, Debug)]
pub struct ModelStore {
    dir: PathBuf,
    root: VerifyingKey,
    lineage: String,
    max_model_bytes: u64,
}

impl ModelStore {
    pub fn new(dir: PathBuf, root: VerifyingKey, lineage: String, max_model_bytes: u64) -> Self {
        Self {
            dir,
            root,
            lineage,
            max_model_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn root_key(&self) -> &VerifyingKey {
        &self.root
    }

    pub fn lineage(&self) -> &str {
        &self.lineage
    }

    /// The newest key set this node accepted, re-checked against the root (blocking; small
    /// files). `None` before the first install or when the files fail the check (logged).
    pub fn held_key_set(&self) -> Option<SignedKeySet> {
        let bytes = std::fs::read(self.dir.join(KEY_SET_FILE)).ok()?;
        let signature = std::fs::read(self.dir.join(KEY_SET_SIGNATURE_FILE)).ok()?;
        match SignedKeySet::verify(&bytes, &signature, &self.root, i64::MIN) {
            Ok(set) => Some(set),
            Err(e) => {
                warn!(dir = %self.dir.display(), "stored key set refused: {e}");
                None
            }
        }
    }

    /// Runs every check on a version (blocking: hashes and parses the weights): the shared
    /// [`verify_release`] plus this node's size limit. `now_unix_ms = None` skips the expiry
    /// checks (re-reading what was installed).
    pub fn verify(
        &self,
        release: Release,
        installed_version: u64,
        now_unix_ms: Option<i64>,
    ) -> Result<VerifiedModel, ModelRefusal> {
        let size = release.weights.len() as u64;
        if size > self.max_model_bytes {
            return Err(ModelRefusal::TooLarge {
                size,
                limit: self.max_model_bytes,
            });
        }
        let held = self.held_key_set();
        let expect = Expectations {
            lineage: &self.lineage,
            architecture: ARCHITECTURE_ID,
            installed_version,
            now_unix_ms: now_unix_ms.unwrap_or(i64::MIN),
        };
        let trust = Trust {
            root: &self.root,
            held: held.as_ref(),
        };
        let verified = verify_release(trust, release.parts(), &release.weights, &expect)?;
        let new_key_set = verified.key_set.is_new.then_some(verified.key_set.signed);
        Ok(VerifiedModel {
            model: InstalledModel {
                manifest: verified.manifest,
                config: verified.config,
                params: Arc::new(verified.params),
            },
            signed_by: verified.signed_by,
            manifest_bytes: release.manifest,
            signature: release.signature,
            weights: release.weights,
            new_key_set,
        })
    }

    /// Keeps a key set newer than the held one (blocking). Called as soon as a download's header
    /// brought one, so a revocation holds even if the version itself is refused.
    pub fn accept_key_set(&self, set: &SignedKeySet) -> Result<(), ModelStoreError> {
        if self
            .held_key_set()
            .is_some_and(|held| held.set.version >= set.set.version)
        {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|source| io_error("create", &self.dir, source))?;
        replace_synced(&self.dir, KEY_SET_SIGNATURE_FILE, &set.signature)?;
        replace_synced(&self.dir, KEY_SET_FILE, &set.bytes)?;
        sync_dir(&self.dir)
    }

    /// Loads and re-verifies the installed version (blocking). `Ok(None)` when nothing is
    /// installed. An expired manifest is only a warning here: the node keeps serving the last
    /// good version until a newer one arrives.
    pub fn load_installed(
        &self,
        now_unix_ms: i64,
    ) -> Result<Option<InstalledModel>, ModelStoreError> {
        // The files on disk must not be older than the last version installed.
        let floor = self.rollback_floor();
        match self.load_dir(&self.dir, floor.saturating_sub(1)) {
            Ok(Some(model)) => {
                warn_if_expired(&model.manifest, now_unix_ms);
                Ok(Some(model))
            }
            Ok(None) if !self.dir.join(PREVIOUS_DIR).join(MANIFEST_FILE).exists() => Ok(None),
            current => {
                // The current files are missing or refused (a crash mid-install, a damaged
                // disk): the previous version, which this node verified and ran before, serves
                // instead, checked again against the held key set.
                let previous_dir = self.dir.join(PREVIOUS_DIR);
                match self.load_dir(&previous_dir, 0) {
                    Ok(Some(model)) => {
                        match &current {
                            Err(e) => warn!(
                                version = model.version(),
                                "installed model unusable ({e}); falling back to the previous                                  version"
                            ),
                            Ok(_) => warn!(
                                version = model.version(),
                                "no current model files; falling back to the previous version"
                            ),
                        }
                        warn_if_expired(&model.manifest, now_unix_ms);
                        Ok(Some(model))
                    }
                    _ => current,
                }
            }
        }
    }

    fn load_dir(
        &self,
        dir: &Path,
        installed_version: u64,
    ) -> Result<Option<InstalledModel>, ModelStoreError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let signature_path = dir.join(SIGNATURE_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
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
        let Some(held) = self.held_key_set() else {
            return Err(self.refused(ModelRefusal::NoKeySet));
        };
        let release = Release {
            manifest: read(&manifest_path)?,
            signature: read(&signature_path)?,
            key_set: held.bytes,
            key_set_signature: held.signature,
            weights: read(&weights_path)?,
        };
        let verified = self
            .verify(release, installed_version, None)
            .map_err(|reason| self.refused(reason))?;
        Ok(Some(verified.model))
    }

    /// Writes a verified version (blocking): each file goes to a temporary name, is synced, and is
    /// renamed over the old one; the directory is synced last. A crash part-way leaves files that
    /// fail re-verification, so the node starts with no model rather than a mixed one.
    /// The files of the version being replaced move to `previous/` first.
    pub fn install(&self, verified: VerifiedModel) -> Result<InstalledModel, ModelStoreError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|source| io_error("create", &self.dir, source))?;
        if let Some(set) = &verified.new_key_set {
            self.accept_key_set(set)?;
        }
        self.keep_previous()?;
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

    /// Moves the current files into `previous/` (replacing what was there), so a bad or
    /// damaged current version has a whole, verified one behind it.
    fn keep_previous(&self) -> Result<(), ModelStoreError> {
        if !self.dir.join(MANIFEST_FILE).exists() {
            return Ok(());
        }
        let previous = self.dir.join(PREVIOUS_DIR);
        if previous.exists() {
            std::fs::remove_dir_all(&previous)
                .map_err(|source| io_error("remove", &previous, source))?;
        }
        std::fs::create_dir_all(&previous)
            .map_err(|source| io_error("create", &previous, source))?;
        for name in [MANIFEST_FILE, SIGNATURE_FILE, WEIGHTS_FILE] {
            let from = self.dir.join(name);
            if from.exists() {
                let to = previous.join(name);
                std::fs::rename(&from, &to)
                    .map_err(|source| io_error("move aside", &from, source))?;
            }
        }
        sync_dir(&previous)?;
        sync_dir(&self.dir)
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

fn warn_if_expired(manifest: &Manifest, now_unix_ms: i64) {
    if manifest.expires_unix_ms <= now_unix_ms {
        warn!(
            version = manifest.version,
            expires_unix_ms = manifest.expires_unix_ms,
            "installed model has expired; serving it until a newer version is installed"
        );
    }
}

/// Writes `dir/name` through a synced temporary file and a rename.
fn replace_synced(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ModelStoreError> {
    let temp = dir.join(format!(".{name}.tmp"));
    write_synced(&temp, bytes)?;
    let path = dir.join(name);
    std::fs::rename(&temp, &path).map_err(|source| io_error("rename into place", &path, source))
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
