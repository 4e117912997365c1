//! ShelfNet: the small on-device CNN that tells a stocked shelf slot from an empty one, and
//! everything the federation needs around it.
//!
//! * [`model`]: the Burn module ([`ShelfNet`]) and its configuration ([`ShelfNetConfig`]).
//! * [`params`]: the canonical flat parameter vector (the unit the coordinator aggregates), its
//!   layout, and the safetensors encoding of it.
//! * [`device`]: picking the compute device (wgpu when a real GPU adapter exists, else the
//!   pure-Rust `flex` CPU backend).
//! * [`train`] and [`infer`]: local SGD on a node's labelled crops, and batched inference.
//! * [`manifest`]: signed descriptions of model versions.
//! * [`interop`]: the weights as the `state_dict` of the equivalent PyTorch module (safetensors,
//!   linear weights transposed to PyTorch's `[out, in]`), read by
//!   `deploy/torch/backroom_shelfnet.py`.
//!
//! Images everywhere are `n * 3 * 64 * 64` `f32` values in `[0, 1]`, CHW per image, images
//! concatenated. Labels are `u8` class indices into [`CLASS_NAMES`].

pub mod device;
pub mod infer;
pub mod interop;
pub mod keys;
pub mod manifest;
pub mod model;
pub mod params;
pub mod train;
pub mod verify;

#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod tests;

pub use burn::tensor::Device;
pub use device::{BackendChoice, ComputeDevice, select_device};
pub use infer::{Assessment, LoadedModel, assess, evaluate, predict};
pub use interop::{from_torch_safetensors, to_torch_safetensors, torch_layout};
pub use model::{ShelfNet, ShelfNetConfig};
pub use params::{
    TensorSpec, flatten, from_safetensors, init_parameters, num_parameters, parameter_layout,
    to_safetensors, unflatten,
};
pub use train::{MAX_PROXIMAL_MU, TrainOutcome, TrainSettings, train_local};

/// Identifier of the architecture implemented here, recorded in manifests.
pub const ARCHITECTURE_ID: &str = "shelfnet-v1";
/// Crops are `IMAGE_SIZE x IMAGE_SIZE` pixels.
pub const IMAGE_SIZE: usize = 64;
/// Colour channels per crop (RGB).
pub const CHANNELS: usize = 3;
/// Number of `f32` values in one crop (`CHANNELS * IMAGE_SIZE * IMAGE_SIZE`).
pub const IMAGE_NUMEL: usize = CHANNELS * IMAGE_SIZE * IMAGE_SIZE;
/// Number of output classes.
pub const NUM_CLASSES: usize = 2;
/// Class names, indexed by class id: 0 = stocked, 1 = empty.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = ["stocked", "empty"];

/// Everything that can go wrong in this crate. Messages are lower-case sentence fragments so
/// callers can embed them (`"loading weights: {err}"`).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A flat parameter vector does not match the layout of the configuration.
    #[error("parameter vector has {actual} values, expected {expected}")]
    ParameterCount { actual: usize, expected: usize },
    /// A parameter is NaN or infinite.
    #[error("parameter {index} is not finite")]
    NonFiniteParameter { index: usize },
    /// The architecture configuration is out of the supported range.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// Images or labels are malformed (length, range, non-finite pixels, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Training settings are out of range.
    #[error("invalid training settings: {0}")]
    InvalidSettings(String),
    /// A safetensors buffer could not be produced or does not match the expected layout.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A backend name did not parse.
    #[error("unknown backend {0:?}, expected one of auto, wgpu, cpu")]
    UnknownBackend(String),
    /// The requested compute device cannot be used.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// The tensor backend failed (read-back error, or a panic inside Burn that was caught).
    #[error("backend failure: {0}")]
    Backend(String),
    /// Training produced a non-finite loss or non-finite parameters.
    #[error("training diverged: {0}")]
    Diverged(String),
}

/// Runs `f`, turning a panic inside Burn into [`ModelError::Backend`] so that a backend bug (or
/// a GPU failure) fails one request instead of the node. Inputs are validated before Burn is
/// called, so a panic here is never the caller's fault.
pub(crate) fn catch_backend_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, ModelError>,
) -> Result<T, ModelError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(ModelError::Backend(format!(
            "{what} panicked: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

/// The message of a panic payload, when it is a string.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
