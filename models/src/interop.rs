//! PyTorch interoperability: ShelfNet weights as the `state_dict` of the equivalent PyTorch
//! module, in a safetensors file.
//!
//! The PyTorch module (`deploy/torch/backroom_shelfnet.py`) registers `conv1`, `conv2`,
//! (`conv3`), `fc1`, `fc2`, so its `state_dict` holds the same names as
//! [`parameter_layout`](crate::parameter_layout). The only layout difference is the linear
//! weights: Burn stores them `[d_input, d_output]`, PyTorch `[out_features, in_features]`, so
//! they are transposed on the way out and back on the way in. Conv weights (`[out, in, k, k]`)
//! and biases are identical in both.
//!
//! A file made here carries `__metadata__` `{"format": "pt", "backroom_architecture":
//! "shelfnet-v1", "backroom_config": <config JSON>}`, so `safetensors.torch.load_file` reads it
//! and the Python side can rebuild the module from the file alone.
//!
//! Only `F32` tensors are accepted: a half- or double-precision file is refused with a message
//! saying how to convert it in PyTorch, rather than converted silently (Backroom's aggregation
//! works on `f32`, and a quiet rounding of `F64` weights would hide where the model came from).

use std::collections::{BTreeSet, HashMap};

use safetensors::tensor::{Dtype, SafeTensors};

use crate::model::ShelfNetConfig;
use crate::params::{TensorSpec, check_params, parameter_layout};
use crate::{ARCHITECTURE_ID, ModelError};

/// `__metadata__` key naming the architecture (value [`ARCHITECTURE_ID`]).
pub const ARCHITECTURE_METADATA_KEY: &str = "backroom_architecture";
/// `__metadata__` key holding the [`ShelfNetConfig`] as JSON.
pub const CONFIG_METADATA_KEY: &str = "backroom_config";

/// Bytes of the little-endian header length that starts every safetensors file.
const HEADER_LENGTH_BYTES: usize = 8;

/// Every tensor of the PyTorch `state_dict` for `config`, in canonical order, with PyTorch's
/// shapes (linear weights are `[out_features, in_features]`).
pub fn torch_layout(config: &ShelfNetConfig) -> Vec<TensorSpec> {
    parameter_layout(config)
        .into_iter()
        .map(|spec| match spec.shape.as_slice() {
            &[d_input, d_output] => TensorSpec {
                name: spec.name,
                shape: vec![d_output, d_input],
            },
            _ => spec,
        })
        .collect()
}

/// Encodes the flat parameter vector `params` (canonical Burn layout) as the safetensors
/// `state_dict` of the equivalent PyTorch module: little-endian `F32` tensors named
/// `conv1.weight` ... `fc2.bias`, linear weights transposed to `[out, in]`, and the metadata
/// described in the [module docs](self). The output is deterministic.
pub fn to_torch_safetensors(
    config: &ShelfNetConfig,
    params: &[f32],
) -> Result<Vec<u8>, ModelError> {
    config.validate()?;
    let burn_layout = parameter_layout(config);
    check_params(&burn_layout, params)?;
    let config_json = serde_json::to_string(config)
        .map_err(|err| ModelError::InvalidConfig(format!("encoding as JSON: {err}")))?;

    let mut data = Vec::with_capacity(params.len() * 4);
    let mut entries = Vec::with_capacity(burn_layout.len());
    let mut rest = params;
    for (burn_spec, torch_spec) in burn_layout.iter().zip(torch_layout(config)) {
        let (values, tail) = rest.split_at(burn_spec.numel());
        rest = tail;
        let start = data.len();
        match burn_spec.shape.as_slice() {
            &[d_input, d_output] => {
                for v in transpose(values, d_input, d_output) {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                for v in values {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        entries.push(format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[{start},{}]}}",
            json_string(&torch_spec.name)?,
            json_usizes(&torch_spec.shape),
            data.len()
        ));
    }

    // The header is written by hand, in canonical order: the safetensors crate serialises
    // `__metadata__` from a `HashMap`, whose order changes from process to process.
    let metadata = format!(
        "\"__metadata__\":{{\"format\":\"pt\",{}:{},{}:{}}}",
        json_string(ARCHITECTURE_METADATA_KEY)?,
        json_string(ARCHITECTURE_ID)?,
        json_string(CONFIG_METADATA_KEY)?,
        json_string(&config_json)?,
    );
    let mut header = format!("{{{metadata},{}}}", entries.join(",")).into_bytes();
    // Safetensors pads the header with spaces so the data starts 8-byte aligned.
    header.resize(header.len().next_multiple_of(HEADER_LENGTH_BYTES), b' ');

    let mut file = Vec::with_capacity(HEADER_LENGTH_BYTES + header.len() + data.len());
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    Ok(file)
}

/// Decodes a safetensors `state_dict` of the PyTorch ShelfNet (made by
/// `deploy/torch/backroom_shelfnet.py`, or by `safetensors.torch.save_file` on the module's
/// `state_dict()`) into its configuration and the canonical flat parameter vector.
///
/// The configuration comes from the file's `backroom_config` metadata when present; otherwise
/// `expected` must be given. When both are present they must be equal. A
/// `backroom_architecture` other than [`ARCHITECTURE_ID`] is refused.
///
/// Every tensor of [`torch_layout`] must be present with its PyTorch shape, as `F32`, with
/// finite values; any other tensor is refused. Malformed input gives
/// [`ModelError::Safetensors`] (or [`ModelError::InvalidConfig`] for an invalid `expected`),
/// never a panic.
pub fn from_torch_safetensors(
    bytes: &[u8],
    expected: Option<&ShelfNetConfig>,
) -> Result<(ShelfNetConfig, Vec<f32>), ModelError> {
    let malformed = |err| ModelError::Safetensors(format!("malformed buffer: {err}"));
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(malformed)?;
    let file = SafeTensors::deserialize(bytes).map_err(malformed)?;
    let config = resolve_config(header.metadata().as_ref(), expected)?;

    let torch = torch_layout(&config);
    let wanted: BTreeSet<&str> = torch.iter().map(|spec| spec.name.as_str()).collect();
    let present: BTreeSet<&str> = file.names().into_iter().collect();
    let extra: Vec<&str> = present.difference(&wanted).copied().collect();
    if !extra.is_empty() {
        return Err(ModelError::Safetensors(format!(
            "unexpected tensors {extra:?} (a ShelfNet state_dict holds only {wanted:?})"
        )));
    }
    let missing: Vec<&str> = wanted.difference(&present).copied().collect();
    if !missing.is_empty() {
        return Err(ModelError::Safetensors(format!(
            "missing tensors {missing:?}"
        )));
    }

    let mut flat = Vec::with_capacity(torch.iter().map(TensorSpec::numel).sum());
    for spec in &torch {
        let values = read_f32_tensor(&file, spec)?;
        match spec.shape.as_slice() {
            // PyTorch's [out, in] back to Burn's [in, out].
            &[d_output, d_input] => flat.extend(transpose(&values, d_output, d_input)),
            _ => flat.extend(values),
        }
    }
    Ok((config, flat))
}

/// The configuration a file describes: its metadata's, checked against `expected`, or
/// `expected` when the file has none.
fn resolve_config(
    metadata: Option<&HashMap<String, String>>,
    expected: Option<&ShelfNetConfig>,
) -> Result<ShelfNetConfig, ModelError> {
    let refuse = |msg: String| Err(ModelError::Safetensors(msg));
    let metadata = metadata.cloned().unwrap_or_default();
    if let Some(architecture) = metadata.get(ARCHITECTURE_METADATA_KEY)
        && architecture != ARCHITECTURE_ID
    {
        return refuse(format!(
            "file holds architecture {architecture:?}, expected {ARCHITECTURE_ID:?}"
        ));
    }
    let from_file = match metadata.get(CONFIG_METADATA_KEY) {
        Some(json) => {
            let config: ShelfNetConfig = serde_json::from_str(json).map_err(|err| {
                ModelError::Safetensors(format!("metadata {CONFIG_METADATA_KEY}: {err}"))
            })?;
            config.validate().map_err(|err| {
                ModelError::Safetensors(format!("metadata {CONFIG_METADATA_KEY}: {err}"))
            })?;
            Some(config)
        }
        None => None,
    };
    match (from_file, expected) {
        (Some(file), Some(expected)) if &file != expected => refuse(format!(
            "the file's configuration {} differs from the expected {}",
            config_text(&file),
            config_text(expected)
        )),
        (Some(file), _) => Ok(file),
        (None, Some(expected)) => {
            expected.validate()?;
            Ok(expected.clone())
        }
        (None, None) => refuse(format!(
            "the file has no {CONFIG_METADATA_KEY} metadata and no expected configuration was \
             given"
        )),
    }
}

/// The values of the `F32` tensor `spec`, checked for dtype, shape and finiteness.
fn read_f32_tensor(file: &SafeTensors<'_>, spec: &TensorSpec) -> Result<Vec<f32>, ModelError> {
    let refuse = |msg: String| Err(ModelError::Safetensors(msg));
    let view = file
        .tensor(&spec.name)
        .map_err(|_| ModelError::Safetensors(format!("missing tensor {:?}", spec.name)))?;
    match view.dtype() {
        Dtype::F32 => {}
        dtype @ (Dtype::F16 | Dtype::BF16 | Dtype::F64) => {
            return refuse(format!(
                "tensor {:?} is {dtype:?}; Backroom reads F32 only: convert in PyTorch before \
                 saving (`model.float()`, or `{{k: v.float() for k, v in state_dict.items()}}`)",
                spec.name
            ));
        }
        dtype => {
            return refuse(format!(
                "tensor {:?} has dtype {dtype:?}, expected F32",
                spec.name
            ));
        }
    }
    if view.shape() != spec.shape.as_slice() {
        return refuse(format!(
            "tensor {:?} has shape {:?}, expected {:?} (PyTorch's [out, in] for linear weights)",
            spec.name,
            view.shape(),
            spec.shape
        ));
    }
    let data = view.data();
    if data.len() != spec.numel() * 4 {
        return refuse(format!(
            "tensor {:?} has {} data bytes, expected {}",
            spec.name,
            data.len(),
            spec.numel() * 4
        ));
    }
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return refuse(format!(
            "tensor {:?} value {index} is not finite",
            spec.name
        ));
    }
    Ok(values)
}

/// The `[cols, rows]` row-major transpose of a `[rows, cols]` row-major matrix.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for (r, row) in values.chunks_exact(cols).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> Result<String, ModelError> {
    serde_json::to_string(s)
        .map_err(|err| ModelError::Safetensors(format!("encoding {s:?}: {err}")))
}

/// `[a,b,c]`.
fn json_usizes(values: &[usize]) -> String {
    let items: Vec<String> = values.iter().map(usize::to_string).collect();
    format!("[{}]", items.join(","))
}

/// A configuration as its JSON, for messages.
fn config_text(config: &ShelfNetConfig) -> String {
    serde_json::to_string(config).unwrap_or_else(|_| format!("{config:?}"))
}

#[cfg(test)]
mod tests;
