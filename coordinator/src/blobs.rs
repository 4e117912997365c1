//! The blob store: model weights, the server optimiser's state, accepted and quarantined update
//! blobs, through the `object_store` crate. A local directory by default
//! (`<data_dir>/blobs`); an S3-compatible bucket by URL (`blob_store = "s3://bucket/prefix"`,
//! credentials, region and endpoint from the usual `AWS_*` environment variables), so that
//! several coordinators can share one.
//!
//! Weights and updates are content-addressed: a blob is stored under `sha256/<ab>/<hex>` and the
//! database records the reference `sha256:<hex>`. Putting the same bytes twice stores them once,
//! and every read is checked against the digest, so a blob changed at rest is an error, never a
//! silently different model or update. The optimiser's moments are named by lineage and version
//! instead (`moments/<lineage>/v<version>-<m|v>.safetensors`); they are safetensors files read
//! through a layout check.
//!
//! Rows written before the blob store existed hold a file path instead of a reference; reads
//! accept both.
//!
//! A local put is durable when it returns: `object_store` writes a staging file and renames it,
//! and this module then fsyncs the file and its directory (a bucket acknowledges a put only once
//! it is stored).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{CoordinatorError, Result};

/// How a stored reference to a content-addressed blob begins.
pub const REFERENCE_PREFIX: &str = "sha256:";

/// A blob store (cheap to clone).
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// The local directory, when the store is one (for fsync).
    local: Option<(LocalFileSystem, PathBuf)>,
    /// What the store is, for messages: a directory or the URL.
    location: String,
    /// The runtime the store was opened on, for the blocking calls.
    runtime: tokio::runtime::Handle,
    /// Local directories whose own entry is known durable (synced in their parent once).
    durable_dirs: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

fn blob_error(what: impl std::fmt::Display, error: object_store::Error) -> CoordinatorError {
    CoordinatorError::Internal(format!("blob store: {what}: {error}"))
}

/// Whether `text` is a blob reference (`sha256:` and 64 lowercase hex digits).
pub fn is_reference(text: &str) -> bool {
    digest_of(text).is_some()
}

fn digest_of(reference: &str) -> Option<&str> {
    reference.strip_prefix(REFERENCE_PREFIX).filter(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The key of the blob with SHA-256 `hex` (under the store's root).
fn content_key(hex: &str) -> Key {
    Key::from(format!("sha256/{}/{hex}", &hex[..2]))
}

/// Where a local store keeps the blob with SHA-256 `hex` (for tools reading a data directory).
pub fn local_blob_path(dir: &Path, hex: &str) -> PathBuf {
    dir.join("sha256").join(&hex[..hex.len().min(2)]).join(hex)
}

impl BlobStore {
    /// Opens the store `url` names: `s3://BUCKET[/PREFIX]`, `file:///ABSOLUTE/DIR`, or a plain
    /// directory path; `None` is the local directory `default_dir`. A local directory is
    /// created if missing. Call it on a Tokio runtime (the store's I/O runs there). `options`
    /// configure S3 beyond the `AWS_*` environment variables
    /// (`endpoint`, `region`, `allow_http`, … as `object_store` names them); they are an error
    /// for a local store.
    pub fn open(
        url: Option<&str>,
        default_dir: &Path,
        options: &[(String, String)],
    ) -> Result<Self> {
        if !options.is_empty() && !url.is_some_and(|u| u.starts_with("s3://")) {
            return Err(CoordinatorError::InvalidArgument(
                "blob store options apply to an s3:// blob store only".into(),
            ));
        }
        match url {
            None => Self::local(default_dir),
            Some(url) if url.starts_with("s3://") => Self::s3(url, options),
            Some(url) if url.starts_with("file://") => {
                let parsed = url::Url::parse(url).map_err(|e| {
                    CoordinatorError::InvalidArgument(format!("blob store URL {url:?}: {e}"))
                })?;
                let dir = parsed.to_file_path().map_err(|()| {
                    CoordinatorError::InvalidArgument(format!(
                        "blob store URL {url:?} is not an absolute file path"
                    ))
                })?;
                Self::local(&dir)
            }
            Some(url) if url.contains("://") => Err(CoordinatorError::InvalidArgument(format!(
                "blob store {url:?}: only s3://, file:// and directory paths are supported"
            ))),
            Some(dir) => Self::local(Path::new(dir)),
        }
    }

    fn local(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            CoordinatorError::io(
                format!("cannot create the blob directory {}", dir.display()),
                e,
            )
        })?;
        let dir = dir.canonicalize().map_err(|e| {
            CoordinatorError::io(
                format!("cannot resolve the blob directory {}", dir.display()),
                e,
            )
        })?;
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| blob_error(format!("cannot open {}", dir.display()), e))?;
        let store: Arc<dyn ObjectStore> = Arc::new(
            LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| blob_error(format!("cannot open {}", dir.display()), e))?,
        );
        Self::with_runtime(store, Some((fs, dir.clone())), dir.display().to_string())
    }

    fn s3(url: &str, options: &[(String, String)]) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| {
            CoordinatorError::InvalidArgument(format!("blob store URL {url:?}: {e}"))
        })?;
        let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
            CoordinatorError::InvalidArgument(format!("blob store URL {url:?} names no bucket"))
        })?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let key: object_store::aws::AmazonS3ConfigKey = key.parse().map_err(|e| {
                CoordinatorError::InvalidArgument(format!("blob store option {key:?}: {e}"))
            })?;
            builder = builder.with_config(key, value);
        }
        let s3 = builder
            .build()
            .map_err(|e| blob_error(format!("cannot open {url}"), e))?;
        let prefix = parsed.path().trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        Self::with_runtime(store, None, url.to_owned())
    }

    fn with_runtime(
        store: Arc<dyn ObjectStore>,
        local: Option<(LocalFileSystem, PathBuf)>,
        location: String,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            CoordinatorError::Internal("the blob store must be opened on a Tokio runtime".into())
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                local,
                location,
                runtime,
                durable_dirs: std::sync::Mutex::default(),
            }),
        })
    }

    /// The directory or URL of the store.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The local directory, when the store is one.
    pub fn local_dir(&self) -> Option<&Path> {
        self.inner.local.as_ref().map(|(_, dir)| dir.as_path())
    }

    /// Stores `bytes` under their SHA-256 (once: the same bytes again are not rewritten) and
    /// returns the reference to record. Durable when it returns. Hashes on a blocking thread.
    pub async fn put(&self, bytes: Vec<u8>) -> Result<String> {
        let (bytes, hex) = tokio::task::spawn_blocking(move || {
            let hex = backroom_models::manifest::sha256_hex(&bytes);
            (bytes, hex)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("blob hashing task failed: {e}")))?;
        self.put_hashed(bytes, &hex).await
    }

    /// [`BlobStore::put`] of bytes whose SHA-256 (lowercase hex) the caller computed.
    pub async fn put_hashed(&self, bytes: Vec<u8>, hex: &str) -> Result<String> {
        let reference = format!("{REFERENCE_PREFIX}{hex}");
        if digest_of(&reference).is_none() {
            return Err(CoordinatorError::Internal(format!(
                "{hex:?} is not a SHA-256 digest"
            )));
        }
        let key = content_key(hex);
        match self.inner.store.head(&key).await {
            // The key is the content's digest: what is there is these bytes (reads check it).
            Ok(_) => return Ok(reference),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(blob_error(format!("cannot look up {key}"), e)),
        }
        self.put_key(&key, bytes).await?;
        Ok(reference)
    }

    /// Reads the blob `reference` names and checks it against its digest. A file path (a row
    /// from before the blob store) is read from the file system, unchecked here (its row's own
    /// SHA-256 is checked by the caller).
    pub async fn get(&self, reference: &str) -> Result<Vec<u8>> {
        let Some(hex) = digest_of(reference) else {
            return tokio::fs::read(reference)
                .await
                .map_err(|e| CoordinatorError::io(format!("cannot read {reference}"), e));
        };
        let key = content_key(hex);
        let bytes = self.get_key(&key).await?.ok_or_else(|| {
            CoordinatorError::Internal(format!(
                "blob {reference} is missing from the blob store {}",
                self.inner.location
            ))
        })?;
        let found = backroom_models::manifest::sha256_hex(&bytes);
        if found != hex {
            return Err(CoordinatorError::Internal(format!(
                "blob {reference} in {} was changed at rest: its bytes hash to {found}",
                self.inner.location
            )));
        }
        Ok(bytes)
    }

    /// Stores `bytes` under a name (overwriting it).
    pub async fn put_named(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_key(&Key::from(name), bytes).await
    }

    /// The bytes stored under a name, `None` when there are none.
    pub async fn get_named(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.get_key(&Key::from(name)).await
    }

    /// Removes the blob `reference` names (a file path: the file); absent is not an error.
    pub async fn delete(&self, reference: &str) -> Result<()> {
        let Some(hex) = digest_of(reference) else {
            return match tokio::fs::remove_file(reference).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(CoordinatorError::io(
                    format!("cannot remove {reference}"),
                    e,
                )),
            };
        };
        let key = content_key(hex);
        match self.inner.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(blob_error(format!("cannot delete {key}"), e)),
        }
    }

    /// [`BlobStore::put`] from a blocking thread (`spawn_blocking`); never call the blocking
    /// forms on the runtime's own threads.
    ///
    /// It holds its thread while the store's own I/O runs on others: for calls that are few at
    /// a time (a publication, an aggregation), not for work done per request.
    pub fn put_blocking(&self, bytes: Vec<u8>) -> Result<String> {
        let hex = backroom_models::manifest::sha256_hex(&bytes);
        self.inner.runtime.block_on(self.put_hashed(bytes, &hex))
    }

    /// [`BlobStore::get`] from a blocking thread (`spawn_blocking`).
    pub fn get_blocking(&self, reference: &str) -> Result<Vec<u8>> {
        self.inner.runtime.block_on(self.get(reference))
    }

    /// [`BlobStore::put_named`] from a blocking thread.
    pub fn put_named_blocking(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.inner.runtime.block_on(self.put_named(name, bytes))
    }

    /// [`BlobStore::get_named`] from a blocking thread.
    pub fn get_named_blocking(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.runtime.block_on(self.get_named(name))
    }

    async fn put_key(&self, key: &Key, bytes: Vec<u8>) -> Result<()> {
        self.inner
            .store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(|e| blob_error(format!("cannot store {key}"), e))?;
        if let Some((fs, _)) = &self.inner.local {
            let path = fs
                .path_to_filesystem(key)
                .map_err(|e| blob_error(format!("cannot locate {key}"), e))?;
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.sync_file_and_dir(&path))
                .await
                .map_err(|e| CoordinatorError::Internal(format!("blob sync task failed: {e}")))??;
        }
        Ok(())
    }

    async fn get_key(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let got = match self.inner.store.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(blob_error(format!("cannot read {key}"), e)),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(|e| blob_error(format!("cannot read {key}"), e))?;
        Ok(Some(bytes.to_vec()))
    }
}

impl BlobStore {
    /// fsync of a local blob and of its directory (so the rename that put it there survives a
    /// crash), and, the first time this process puts a blob there, of the directory above (the
    /// blob's directory may be new).
    fn sync_file_and_dir(&self, path: &Path) -> Result<()> {
        let sync = |path: &Path| {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| CoordinatorError::io(format!("cannot sync {}", path.display()), e))
        };
        sync(path)?;
        let Some(dir) = path.parent() else {
            return Ok(());
        };
        sync(dir)?;
        let known = self
            .inner
            .durable_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(dir);
        if !known {
            if let Some(parent) = dir.parent() {
                sync(parent)?;
            }
            self.inner
                .durable_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(dir.to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "blobs_tests.rs"]
mod blobs_tests;
