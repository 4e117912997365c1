//! The Backroom wire protocol (`backroom.v1`): generated prost messages and tonic clients/servers.
//! Nothing else lives here.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Generated code for package `backroom.v1`.
pub mod v1 {
    tonic::include_proto!("backroom.v1");
}

/// Largest chunk of a model or update stream, in bytes.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
