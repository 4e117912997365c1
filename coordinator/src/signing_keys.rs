//! The model-signing key hierarchy on the coordinator's disk (`<data_dir>/pki`):
//!
//! * `model-root.key` (0600) and `model-root.pub.pem`: the root. Only the public half is needed to
//!   run; the private half is needed to rotate or revoke signing keys and can live offline
//!   (`backroom keys ... --root-key PATH`).
//! * `model-signing.key` (0600): the key the registry signs manifests with.
//! * `model-keyset.json` and `model-keyset.sig`: the current [`KeySet`], signed by the root.
//!
//! The registry re-reads the signing key and key set on every publication and the node service
//! on every download, so `backroom keys rotate` takes effect without a restart and nodes learn of
//! rotation or revocation with their next download.

use std::path::{Path, PathBuf};

use backroom_models::keys::{KEY_SET_FORMAT, KeyEntry, KeySet, SignedKeySet, key_id};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::identity::PkiPaths;
use crate::registry::{now_unix_ms, write_durably};

/// How long a key set is valid after it is signed. Nodes refuse an expired set, so a
/// coordinator must rotate (or re-sign) within this window.
pub const KEY_SET_VALIDITY_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path} does not hold a valid Ed25519 key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("key set in {path} is refused: {reason}")]
    BadKeySet { path: PathBuf, reason: String },
    #[error(
        "the root private key {0} is missing; it is needed to sign a new key set (pass --root-key \
         with the path of the offline copy)"
    )]
    RootKeyMissing(PathBuf),
    #[error("{path} is not the private half of the trusted root {expected}")]
    WrongRoot { path: PathBuf, expected: String },
    #[error(
        "the active signing key {0} is not trusted by the current key set (run `backroom keys \
         rotate`)"
    )]
    SigningKeyNotTrusted(String),
    #[error(
        "key {0} is the active signing key; rotate to a new key first (`backroom keys rotate --revoke-old`)"
    )]
    RevokeActive(String),
    #[error("key {0} is not in the key set")]
    UnknownKey(String),
    #[error("key {0} is already revoked")]
    AlreadyRevoked(String),
}

/// File paths of the hierarchy.
impl PkiPaths {
    pub fn root_key(&self) -> PathBuf {
        self.dir.join("model-root.key")
    }
    pub fn root_public_key(&self) -> PathBuf {
        self.dir.join("model-root.pub.pem")
    }
    pub fn key_set(&self) -> PathBuf {
        self.dir.join("model-keyset.json")
    }
    pub fn key_set_signature(&self) -> PathBuf {
        self.dir.join("model-keyset.sig")
    }
}

/// Creates what is missing: the root (only when neither half exists), the signing key, and key
/// set version 1 trusting it. An existing directory from before the hierarchy (a signing key
/// only) gets a root and a key set around its key.
pub fn ensure_hierarchy(paths: &PkiPaths) -> Result<(), KeyError> {
    if !paths.root_key().exists() && !paths.root_public_key().exists() {
        let root = generate();
        write_private_key(&paths.root_key(), &root)?;
        write_public_key(&paths.root_public_key(), &root.verifying_key())?;
    }
    if !paths.signing_key().exists() {
        write_private_key(&paths.signing_key(), &generate())?;
    }
    if !paths.key_set().exists() {
        let root = load_root(paths, &paths.root_key())?;
        let signing = load_private_key(&paths.signing_key())?;
        let set = new_set(1, vec![KeyEntry::new(&signing.verifying_key())], vec![]);
        write_set(paths, &SignedKeySet::sign(set, &root))?;
    }
    Ok(())
}

/// The current signing key and the key set it is checked against (which must trust it).
pub fn load_current(paths: &PkiPaths) -> Result<(SigningKey, SignedKeySet), KeyError> {
    let signing = load_private_key(&paths.signing_key())?;
    let set = load_set(paths)?;
    let id = key_id(&signing.verifying_key());
    if !set.set.keys.iter().any(|k| k.id == id) || set.set.is_revoked(&id) {
        return Err(KeyError::SigningKeyNotTrusted(id));
    }
    Ok((signing, set))
}

/// Reads the key set and checks it against the root public key (expiry is reported, not
/// enforced, here: nodes enforce it).
pub fn load_set(paths: &PkiPaths) -> Result<SignedKeySet, KeyError> {
    let root = load_public_key(&paths.root_public_key())?;
    let bytes = read(&paths.key_set())?;
    let signature = read(&paths.key_set_signature())?;
    SignedKeySet::verify(&bytes, &signature, &root, i64::MIN).map_err(|e| KeyError::BadKeySet {
        path: paths.key_set(),
        reason: e.to_string(),
    })
}

/// What a rotation or revocation did.
#[derive(Debug)]
pub struct KeyChange {
    pub set: SignedKeySet,
    pub new_signing_key: Option<String>,
    pub revoked: Vec<String>,
}

/// Generates a new signing key, trusts it in a new key set (renewing the expiry) and makes it
/// the active one; the old key stays trusted unless `revoke_old`.
pub fn rotate(paths: &PkiPaths, root_key: &Path, revoke_old: bool) -> Result<KeyChange, KeyError> {
    let root = load_root(paths, root_key)?;
    let current = load_set(paths)?;
    let old_id = load_private_key(&paths.signing_key())
        .map(|k| key_id(&k.verifying_key()))
        .ok();
    let fresh = generate();
    let new_id = key_id(&fresh.verifying_key());
    let mut keys = current.set.keys.clone();
    keys.push(KeyEntry::new(&fresh.verifying_key()));
    let mut revoked = current.set.revoked.clone();
    let mut newly_revoked = Vec::new();
    if revoke_old
        && let Some(old) = &old_id
        && !revoked.contains(old)
    {
        revoked.push(old.clone());
        newly_revoked.push(old.clone());
    }
    let signed = SignedKeySet::sign(new_set(current.set.version + 1, keys, revoked), &root);
    // The key first: a crash between the two writes leaves an untrusted active key, which the
    // registry reports, rather than a set trusting a key nobody holds.
    replace_private_key(&paths.signing_key(), &fresh)?;
    write_set(paths, &signed)?;
    Ok(KeyChange {
        set: signed,
        new_signing_key: Some(new_id),
        revoked: newly_revoked,
    })
}

/// Revokes signing key `id` in a new key set. The active key cannot be revoked (that would stop
/// all publishing); rotate first.
pub fn revoke(paths: &PkiPaths, root_key: &Path, id: &str) -> Result<KeyChange, KeyError> {
    let root = load_root(paths, root_key)?;
    let current = load_set(paths)?;
    if !current.set.keys.iter().any(|k| k.id == id) {
        return Err(KeyError::UnknownKey(id.to_owned()));
    }
    if current.set.is_revoked(id) {
        return Err(KeyError::AlreadyRevoked(id.to_owned()));
    }
    if let Ok(active) = load_private_key(&paths.signing_key())
        && key_id(&active.verifying_key()) == id
    {
        return Err(KeyError::RevokeActive(id.to_owned()));
    }
    let mut revoked = current.set.revoked.clone();
    revoked.push(id.to_owned());
    let signed = SignedKeySet::sign(
        new_set(current.set.version + 1, current.set.keys.clone(), revoked),
        &root,
    );
    write_set(paths, &signed)?;
    Ok(KeyChange {
        set: signed,
        new_signing_key: None,
        revoked: vec![id.to_owned()],
    })
}

/// The id of the active signing key, if it can be read.
pub fn active_key_id(paths: &PkiPaths) -> Option<String> {
    load_private_key(&paths.signing_key())
        .ok()
        .map(|k| key_id(&k.verifying_key()))
}

fn new_set(version: u64, keys: Vec<KeyEntry>, revoked: Vec<String>) -> KeySet {
    let now = now_unix_ms();
    KeySet {
        format: KEY_SET_FORMAT,
        version,
        created_unix_ms: now,
        expires_unix_ms: now.saturating_add(KEY_SET_VALIDITY_DAYS * 24 * 3600 * 1000),
        keys,
        revoked,
    }
}

fn write_set(paths: &PkiPaths, signed: &SignedKeySet) -> Result<(), KeyError> {
    let wrap = |path: PathBuf| {
        move |e: crate::error::CoordinatorError| KeyError::Write {
            path,
            reason: e.to_string(),
        }
    };
    // The signature after the set would leave a window with a mismatched pair; both are written
    // durably and the reader refuses a mismatch, so the order only decides which error shows.
    write_durably(&paths.key_set(), &signed.bytes).map_err(wrap(paths.key_set()))?;
    write_durably(&paths.key_set_signature(), &signed.signature)
        .map_err(wrap(paths.key_set_signature()))
}

fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    SigningKey::from_bytes(&seed)
}

fn load_root(paths: &PkiPaths, root_key: &Path) -> Result<SigningKey, KeyError> {
    if !root_key.exists() {
        return Err(KeyError::RootKeyMissing(root_key.to_owned()));
    }
    let root = load_private_key(root_key)?;
    let trusted = load_public_key(&paths.root_public_key())?;
    if root.verifying_key() != trusted {
        return Err(KeyError::WrongRoot {
            path: root_key.to_owned(),
            expected: paths.root_public_key().display().to_string(),
        });
    }
    Ok(root)
}

pub fn load_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = String::from_utf8_lossy(&read(path)?).into_owned();
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::BadKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = String::from_utf8_lossy(&read(path)?).into_owned();
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::BadKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_of(path: &Path, key: &SigningKey) -> Result<String, KeyError> {
    key.to_pkcs8_pem(Default::default())
        .map(|pem| pem.to_string())
        .map_err(|e| KeyError::BadKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

fn write_private_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    crate::identity::write_private(path, pem_of(path, key)?.as_bytes()).map_err(|e| {
        KeyError::Write {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })
}

/// Replaces a private key file atomically, keeping mode 0600 from the first byte.
fn replace_private_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let suffix: u64 = rand::random();
    let temp = path.with_extension(format!("{suffix:016x}.tmp"));
    write_private_key(&temp, key)?;
    std::fs::rename(&temp, path).map_err(|e| KeyError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_public_key(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    let pem = key
        .to_public_key_pem(Default::default())
        .map_err(|e| KeyError::BadKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    crate::identity::write_public(path, pem.as_bytes()).map_err(|e| KeyError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn rotation_and_revocation_need_the_root_and_never_strand_the_active_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let paths = PkiPaths::new(dir.path());
        ensure_hierarchy(&paths).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&paths.root_key()), 0o600);
        assert_eq!(mode(&paths.signing_key()), 0o600);
        let (first, set1) = load_current(&paths).unwrap_or_else(|e| panic!("{e}"));
        let first_id = key_id(&first.verifying_key());
        assert_eq!(set1.set.version, 1);

        // The root can live elsewhere; without it nothing can be re-signed.
        let offline = dir.path().join("offline-root.key");
        std::fs::rename(paths.root_key(), &offline).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            rotate(&paths, &paths.root_key(), false),
            Err(KeyError::RootKeyMissing(_))
        ));
        // Starting up again does not invent a new root while the public half is there.
        ensure_hierarchy(&paths).unwrap_or_else(|e| panic!("{e}"));
        assert!(!paths.root_key().exists());

        let change = rotate(&paths, &offline, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&paths.signing_key()), 0o600);
        let (second, set2) = load_current(&paths).unwrap_or_else(|e| panic!("{e}"));
        let second_id = key_id(&second.verifying_key());
        assert_eq!(change.new_signing_key.as_deref(), Some(second_id.as_str()));
        assert_eq!((set2.set.version, set2.set.keys.len()), (2, 2));
        assert!(matches!(
            revoke(&paths, &offline, &second_id),
            Err(KeyError::RevokeActive(_))
        ));
        revoke(&paths, &offline, &first_id).unwrap_or_else(|e| panic!("{e}"));
        let set3 = load_set(&paths).unwrap_or_else(|e| panic!("{e}"));
        assert!(set3.set.is_revoked(&first_id) && set3.set.version == 3);
        assert!(matches!(
            revoke(&paths, &offline, &first_id),
            Err(KeyError::AlreadyRevoked(_))
        ));
        let stranger = dir.path().join("stranger.key");
        write_private_key(&stranger, &generate()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            rotate(&paths, &stranger, true),
            Err(KeyError::WrongRoot { .. })
        ));
    }
}
