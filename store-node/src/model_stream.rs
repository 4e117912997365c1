//! The `DownloadModel` stream protocol: one header, data chunks, one trailer with the SHA-256 of
//! all data bytes. [`ModelAssembler`] checks each chunk as it arrives and never buffers past the
//! announced size or the node's limit.

use backroom_proto::MAX_CHUNK_BYTES;
use backroom_proto::v1::{ModelChunk, ModelHeader};

use crate::model_store::Release;
use backroom_proto::v1::model_chunk::Kind;
use sha2::{Digest, Sha256};

/// Why a model stream was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StreamError {
    #[error("stream did not start with a header chunk")]
    MissingHeader,
    #[error("stream sent a second header")]
    DuplicateHeader,
    #[error("stream ended without a trailer")]
    MissingTrailer,
    #[error("stream sent a chunk after the trailer")]
    ChunkAfterTrailer,
    #[error("stream sent a chunk with no content")]
    EmptyChunk,
    #[error("header announces {announced} bytes of weights, more than max_model_bytes {limit}")]
    AnnouncedTooLarge { announced: u64, limit: u64 },
    #[error("data chunk of {0} bytes exceeds the chunk limit of {MAX_CHUNK_BYTES} bytes")]
    ChunkTooLarge(usize),
    #[error(
        "stream sent at least {received} bytes, more than the {announced} the header announced"
    )]
    Oversize { announced: u64, received: u64 },
    #[error("stream sent {received} bytes, the header announced {announced}")]
    SizeMismatch { announced: u64, received: u64 },
    #[error("trailer SHA-256 is {trailer}, the data hashes to {computed}")]
    TrailerMismatch { trailer: String, computed: String },
}

/// What one chunk was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Header,
    Data,
    Trailer,
}

/// Assembles a `DownloadModel` stream, refusing it as soon as it breaks the protocol: data is
/// never buffered past the header's `weights_size` or `max_model_bytes`.
#[derive(Debug)]
pub struct ModelAssembler {
    max_bytes: u64,
    header: Option<ModelHeader>,
    weights: Vec<u8>,
    hasher: Sha256,
    finished: bool,
}

impl ModelAssembler {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            header: None,
            weights: Vec::new(),
            hasher: Sha256::new(),
            finished: false,
        }
    }

    /// The header (manifest, signature, key set, announced size), once it has arrived.
    pub fn header(&self) -> Option<&ModelHeader> {
        self.header.as_ref()
    }

    pub fn push(&mut self, chunk: ModelChunk) -> Result<ChunkKind, StreamError> {
        if self.finished {
            return Err(StreamError::ChunkAfterTrailer);
        }
        match chunk.kind {
            None => Err(StreamError::EmptyChunk),
            Some(Kind::Header(header)) => {
                if self.header.is_some() {
                    return Err(StreamError::DuplicateHeader);
                }
                if header.weights_size > self.max_bytes {
                    return Err(StreamError::AnnouncedTooLarge {
                        announced: header.weights_size,
                        limit: self.max_bytes,
                    });
                }
                // Bounded by max_bytes just above; capped again so a lying header costs little.
                let reserve = header.weights_size.min(64 * 1024 * 1024);
                self.weights = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
                self.header = Some(header);
                Ok(ChunkKind::Header)
            }
            Some(Kind::Data(data)) => {
                let Some(announced) = self.header.as_ref().map(|h| h.weights_size) else {
                    return Err(StreamError::MissingHeader);
                };
                if data.len() > MAX_CHUNK_BYTES {
                    return Err(StreamError::ChunkTooLarge(data.len()));
                }
                let received = self.weights.len() as u64 + data.len() as u64;
                if received > announced {
                    return Err(StreamError::Oversize {
                        announced,
                        received,
                    });
                }
                self.hasher.update(&data);
                self.weights.extend_from_slice(&data);
                Ok(ChunkKind::Data)
            }
            Some(Kind::Trailer(trailer)) => {
                let Some(announced) = self.header.as_ref().map(|h| h.weights_size) else {
                    return Err(StreamError::MissingHeader);
                };
                let received = self.weights.len() as u64;
                if received != announced {
                    return Err(StreamError::SizeMismatch {
                        announced,
                        received,
                    });
                }
                let computed = hex::encode(self.hasher.clone().finalize());
                let trailer = hex::encode(trailer.sha256);
                if computed != trailer {
                    return Err(StreamError::TrailerMismatch { trailer, computed });
                }
                self.finished = true;
                Ok(ChunkKind::Trailer)
            }
        }
    }

    /// The assembled model; only after a header, all announced data and a matching trailer.
    pub fn finish(self) -> Result<Release, StreamError> {
        let Some(header) = self.header else {
            return Err(StreamError::MissingHeader);
        };
        if !self.finished {
            return Err(StreamError::MissingTrailer);
        }
        Ok(Release {
            manifest: header.manifest,
            signature: header.signature,
            key_set: header.key_set,
            key_set_signature: header.key_set_signature,
            weights: self.weights,
        })
    }
}
