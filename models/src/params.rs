//! The canonical flat parameter vector: its layout, conversion to and from a [`ShelfNet`], and
//! its safetensors encoding.
//!
//! The flat vector is the concatenation, in [`parameter_layout`] order, of every parameter
//! tensor in row-major order. That order is Burn's own module traversal order (struct field
//! order), and the names are Burn's module paths.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::model::{ShelfNet, ShelfNetConfig};
use crate::{ModelError, catch_backend_panic};

/// Name and shape of one parameter tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    /// Burn module path, e.g. `conv1.weight` or `fc2.bias`.
    pub name: String,
    /// Tensor shape (row-major).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of values in the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every parameter tensor of the network built from `config`, in canonical (flattening) order.
pub fn parameter_layout(config: &ShelfNetConfig) -> Vec<TensorSpec> {
    let spec = |name: &str, shape: Vec<usize>| TensorSpec {
        name: name.to_string(),
        shape,
    };
    let mut layout = Vec::with_capacity(2 * config.conv_channels.len() + 4);
    let k = config.kernel_size;
    let mut c_in = config.input_channels;
    for (i, &c_out) in config.conv_channels.iter().enumerate() {
        layout.push(spec(
            &format!("conv{}.weight", i + 1),
            vec![c_out, c_in, k, k],
        ));
        layout.push(spec(&format!("conv{}.bias", i + 1), vec![c_out]));
        c_in = c_out;
    }
    layout.push(spec(
        "fc1.weight",
        vec![config.flat_features(), config.hidden],
    ));
    layout.push(spec("fc1.bias", vec![config.hidden]));
    layout.push(spec("fc2.weight", vec![config.hidden, config.num_classes]));
    layout.push(spec("fc2.bias", vec![config.num_classes]));
    layout
}

/// Length of the flat parameter vector for `config` (71 666 for the standard net, 1 663 370 for
/// [`ShelfNetConfig::mcmahan_cnn`]).
pub fn num_parameters(config: &ShelfNetConfig) -> usize {
    parameter_layout(config).iter().map(TensorSpec::numel).sum()
}

/// Serialises seeded initialisations: Burn's CPU random generator is process-global, so two
/// concurrent seeded initialisations would interleave their draws.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// A freshly initialised parameter vector, deterministic for a given `seed` (Burn's default
/// Kaiming-uniform initialisation, drawn on the CPU `flex` device after seeding it).
///
/// Determinism holds as long as nothing else in the process draws from Burn's CPU random
/// generator at the same time (calls to this function are serialised).
pub fn init_parameters(config: &ShelfNetConfig, seed: u64) -> Result<Vec<f32>, ModelError> {
    config.validate()?;
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    catch_backend_panic("parameter initialisation", || {
        let device = Device::flex();
        device.seed(seed);
        let model = config.init(&device)?;
        // Parameters are lazy: reading them draws them, in canonical order, under the lock.
        flatten(&model)
    })
}

/// Reads every parameter of `model` into the canonical flat vector.
pub fn flatten(model: &ShelfNet) -> Result<Vec<f32>, ModelError> {
    let tensors = module_tensors(model)?;
    let mut flat = Vec::with_capacity(tensors.iter().map(|(_, _, v)| v.len()).sum());
    for (_, _, values) in tensors {
        flat.extend_from_slice(&values);
    }
    Ok(flat)
}

/// One parameter tensor read from a module: `(module path, shape, values)`.
pub(crate) type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Every float parameter of `model`, in Burn's traversal order.
pub(crate) fn module_tensors(model: &ShelfNet) -> Result<Vec<NamedTensor>, ModelError> {
    #[derive(Default)]
    struct Collector {
        path: Vec<String>,
        tensors: Vec<NamedTensor>,
        error: Option<ModelError>,
    }
    impl ModuleVisitor for Collector {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.error.is_some() {
                return;
            }
            let tensor = param.val();
            let shape = tensor.dims().to_vec();
            match tensor.try_into_vec_as::<f32>() {
                Ok(values) => self.tensors.push((self.path.join("."), shape, values)),
                Err(err) => {
                    self.error = Some(ModelError::Backend(format!(
                        "reading parameter {}: {err}",
                        self.path.join(".")
                    )))
                }
            }
        }
    }
    catch_backend_panic("reading parameters", || {
        let mut collector = Collector::default();
        model.visit(&mut collector);
        match collector.error {
            Some(err) => Err(err),
            None => Ok(collector.tensors),
        }
    })
}

/// Checks `params` has the length of `layout` and only finite values.
pub(crate) fn check_params(layout: &[TensorSpec], params: &[f32]) -> Result<(), ModelError> {
    let expected: usize = layout.iter().map(TensorSpec::numel).sum();
    if params.len() != expected {
        return Err(ModelError::ParameterCount {
            actual: params.len(),
            expected,
        });
    }
    if let Some(index) = params.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFiniteParameter { index });
    }
    Ok(())
}

/// Builds the network for `config` on `device` with the given flat parameters.
///
/// Fails (never panics) on an invalid configuration, a vector of the wrong length, or a
/// non-finite value. On an autodiff-enabled device the parameters track gradients.
pub fn unflatten(
    config: &ShelfNetConfig,
    params: &[f32],
    device: &Device,
) -> Result<ShelfNet, ModelError> {
    config.validate()?;
    let layout = parameter_layout(config);
    check_params(&layout, params)?;
    catch_backend_panic("building the model", || {
        // The freshly initialised parameters are lazy and are replaced before ever being drawn.
        let mut model = config.init(device)?;
        let mut rest = params;
        let mut next = |spec: &TensorSpec| {
            let (head, tail) = rest.split_at(spec.numel());
            rest = tail;
            TensorData::new(head.to_vec(), spec.shape.clone())
        };
        let mut specs = layout.iter();
        let mut param = |shape_of: &str| -> Result<TensorData, ModelError> {
            let spec = specs.next().ok_or_else(|| {
                ModelError::InvalidConfig(format!("parameter layout has no {shape_of}"))
            })?;
            if spec.name != shape_of {
                return Err(ModelError::InvalidConfig(format!(
                    "parameter layout has {} where {shape_of} belongs",
                    spec.name
                )));
            }
            Ok(next(spec))
        };
        model.conv1.weight = Param::from_data(param("conv1.weight")?, device);
        model.conv1.bias = Some(Param::from_data(param("conv1.bias")?, device));
        model.conv2.weight = Param::from_data(param("conv2.weight")?, device);
        model.conv2.bias = Some(Param::from_data(param("conv2.bias")?, device));
        if let Some(conv3) = model.conv3.as_mut() {
            conv3.weight = Param::from_data(param("conv3.weight")?, device);
            conv3.bias = Some(Param::from_data(param("conv3.bias")?, device));
        }
        model.fc1.weight = Param::from_data(param("fc1.weight")?, device);
        model.fc1.bias = Some(Param::from_data(param("fc1.bias")?, device));
        model.fc2.weight = Param::from_data(param("fc2.weight")?, device);
        model.fc2.bias = Some(Param::from_data(param("fc2.bias")?, device));
        Ok(model)
    })
}

/// Encodes a flat parameter vector as a safetensors buffer: one little-endian `F32` tensor per
/// layout entry, named by its module path, no metadata. The output is deterministic.
pub fn to_safetensors(layout: &[TensorSpec], params: &[f32]) -> Result<Vec<u8>, ModelError> {
    let expected: usize = layout.iter().map(TensorSpec::numel).sum();
    if params.len() != expected {
        return Err(ModelError::ParameterCount {
            actual: params.len(),
            expected,
        });
    }
    let mut seen = HashSet::new();
    if let Some(dup) = layout.iter().find(|spec| !seen.insert(spec.name.as_str())) {
        return Err(ModelError::Safetensors(format!(
            "layout names tensor {:?} twice",
            dup.name
        )));
    }
    let mut buffers = Vec::with_capacity(layout.len());
    let mut rest = params;
    for spec in layout {
        let (head, tail) = rest.split_at(spec.numel());
        rest = tail;
        let bytes: Vec<u8> = head.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((spec, bytes));
    }
    let mut views = Vec::with_capacity(layout.len());
    for (spec, bytes) in &buffers {
        let view = TensorView::new(Dtype::F32, spec.shape.clone(), bytes)
            .map_err(|err| ModelError::Safetensors(format!("tensor {}: {err}", spec.name)))?;
        views.push((spec.name.as_str(), view));
    }
    safetensors::serialize(views, None).map_err(|err| ModelError::Safetensors(err.to_string()))
}

/// Decodes a safetensors buffer into the flat vector for `layout`.
///
/// The buffer must hold exactly the layout's tensors (no more, no fewer), each `F32` with the
/// layout's shape. Malformed bytes give an error, never a panic.
pub fn from_safetensors(layout: &[TensorSpec], bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|err| ModelError::Safetensors(format!("malformed buffer: {err}")))?;
    let wanted: HashMap<&str, &TensorSpec> = layout
        .iter()
        .map(|spec| (spec.name.as_str(), spec))
        .collect();
    if let Some(extra) = file.names().into_iter().find(|n| !wanted.contains_key(n)) {
        return Err(ModelError::Safetensors(format!(
            "unexpected tensor {extra:?}"
        )));
    }
    let mut flat = Vec::with_capacity(layout.iter().map(TensorSpec::numel).sum());
    for spec in layout {
        let view = file
            .tensor(&spec.name)
            .map_err(|_| ModelError::Safetensors(format!("missing tensor {:?}", spec.name)))?;
        if view.dtype() != Dtype::F32 {
            return Err(ModelError::Safetensors(format!(
                "tensor {:?} has dtype {:?}, expected F32",
                spec.name,
                view.dtype()
            )));
        }
        if view.shape() != spec.shape.as_slice() {
            return Err(ModelError::Safetensors(format!(
                "tensor {:?} has shape {:?}, expected {:?}",
                spec.name,
                view.shape(),
                spec.shape
            )));
        }
        let data = view.data();
        if data.len() != spec.numel() * 4 {
            return Err(ModelError::Safetensors(format!(
                "tensor {:?} has {} data bytes, expected {}",
                spec.name,
                data.len(),
                spec.numel() * 4
            )));
        }
        flat.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(flat)
}

/// Independent f64 accumulators in [`l2_norm`]: they let the compiler keep several SIMD lanes
/// busy (one running sum would serialise every addition).
const NORM_LANES: usize = 8;

/// L2 norm of a flat parameter vector (a weight delta), accumulated in f64; NaN or infinite
/// when a value is non-finite (squares of finite f32 values cannot overflow f64). The node
/// clips with it and the coordinator re-checks with it, so both measure the same norm.
pub fn l2_norm(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; NORM_LANES];
    let chunks = values.chunks_exact(NORM_LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            let v = f64::from(*value);
            *lane += v * v;
        }
    }
    let tail: f64 = rest.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    (lanes.iter().sum::<f64>() + tail).sqrt()
}
