//! The node's data key and authenticated encryption of what it keeps at rest.
//!
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) with a random 192-bit nonce per sealed
//! item, so nonces never repeat in practice without any counter to keep. Every item is bound to
//! what it is by its associated data (for example `frame-image:<camera>:<captured ms>:<id>`),
//! so a sealed blob moved to another row or file fails to open.
//!
//! Sealed format: `BKR1` ‖ nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes).
//!
//! The key is 32 random bytes, hex-encoded in a key file that must be readable by its owner
//! only (mode 0600, like an SSH private key); the node creates it on first start and refuses a
//! file that others can read.

use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroize;

const MAGIC: &[u8; 4] = b"BKR1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// Errors of the key file and of sealing and opening.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("cannot read key file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create key file {}: {source}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {} has mode {mode:04o}: it must be readable by its owner only (chmod 600 it)",
        .path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {} does not hold 64 hex digits (a 32-byte key)", .path.display())]
    Malformed { path: PathBuf },
    #[error("sealed data is too short or not in the BKR1 format")]
    Format,
    #[error("sealed data does not authenticate (wrong key, or altered or moved data)")]
    Authentication,
    #[error("encryption failed")]
    Seal,
}

/// The node's data key, loaded once.
pub struct Vault {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    /// Loads the key from `path`, creating a new random key there (mode 0600, parent 0700)
    /// when the file does not exist.
    pub fn open_or_create(path: &Path) -> Result<Self, VaultError> {
        match std::fs::metadata(path) {
            Ok(_) => Self::open(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create_key(path) {
                Ok(()) => Self::open(path),
                // Another process created it first.
                Err(VaultError::Create { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    Self::open(path)
                }
                Err(other) => Err(other),
            },
            Err(source) => Err(VaultError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Loads an existing key file.
    pub fn open(path: &Path) -> Result<Self, VaultError> {
        check_permissions(path)?;
        let mut text = std::fs::read_to_string(path).map_err(|source| VaultError::Read {
            path: path.to_owned(),
            source,
        })?;
        let decoded = hex::decode(text.trim());
        text.zeroize();
        let mut key = decoded.map_err(|_| VaultError::Malformed {
            path: path.to_owned(),
        })?;
        if key.len() != KEY_LEN {
            key.zeroize();
            return Err(VaultError::Malformed {
                path: path.to_owned(),
            });
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| VaultError::Malformed {
            path: path.to_owned(),
        });
        key.zeroize();
        Ok(Self { cipher: cipher? })
    }

    /// A vault with a fresh random key held in memory only (tests, benchmarks).
    pub fn ephemeral() -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&XChaCha20Poly1305::generate_key(&mut OsRng)),
        }
    }

    /// Encrypts `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| VaultError::Seal)?;
        let mut sealed = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(MAGIC);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts what [`Vault::seal`] made with the same `aad`.
    pub fn open_sealed(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < MAGIC.len() + NONCE_LEN + TAG_LEN || &sealed[..MAGIC.len()] != MAGIC {
            return Err(VaultError::Format);
        }
        let (nonce, ciphertext) = sealed[MAGIC.len()..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| VaultError::Authentication)
    }
}

fn create_key(path: &Path) -> Result<(), VaultError> {
    let create = |source| VaultError::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent).map_err(create)?;
    }
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let mut text = hex::encode(key);
    text.push('\n');
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(path).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    text.zeroize();
    written.map_err(create)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), VaultError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| VaultError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), VaultError> {
    Ok(())
}
