//! The ShelfNet family: two or three conv blocks and a two-layer classifier head.
//!
//! The standard configuration ([`ShelfNetConfig::new`]) is the shelf-slot classifier every
//! store runs (3×64×64 crops, 2 classes). The same module, configured by
//! [`ShelfNetConfig::mcmahan_cnn`], is the MNIST CNN of McMahan et al. (2017), which the
//! convergence benchmark trains on real digit and Fashion-MNIST images.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{CHANNELS, IMAGE_SIZE, ModelError, NUM_CLASSES};

/// Largest channel count accepted per conv block; keeps a hostile configuration in a manifest
/// from asking for an absurd allocation.
pub const MAX_CONV_CHANNELS: usize = 256;
/// Largest accepted hidden width of the classifier head.
pub const MAX_HIDDEN: usize = 1024;
/// Accepted numbers of conv blocks; each halves the spatial size.
pub const CONV_BLOCKS: std::ops::RangeInclusive<usize> = 2..=3;
/// Largest accepted odd kernel size.
pub const MAX_KERNEL: usize = 7;
/// Largest accepted input side, in pixels.
pub const MAX_IMAGE_SIZE: usize = 256;
/// Largest accepted number of input channels.
pub const MAX_INPUT_CHANNELS: usize = 4;
/// Largest accepted number of classes.
pub const MAX_CLASSES: usize = 1000;
/// Largest accepted input to the first fully connected layer.
pub const MAX_FLAT_FEATURES: usize = 1 << 16;

const fn default_kernel() -> usize {
    3
}
const fn default_input_channels() -> usize {
    CHANNELS
}
const fn default_image_size() -> usize {
    IMAGE_SIZE
}
const fn default_classes() -> usize {
    NUM_CLASSES
}
fn is_default_kernel(v: &usize) -> bool {
    *v == default_kernel()
}
fn is_default_input_channels(v: &usize) -> bool {
    *v == default_input_channels()
}
fn is_default_image_size(v: &usize) -> bool {
    *v == default_image_size()
}
fn is_default_classes(v: &usize) -> bool {
    *v == default_classes()
}

/// Architecture hyper-parameters of a ShelfNet. Serialised as JSON beside the weights and in
/// model manifests. Fields at their shelf defaults are omitted, so the standard net is
/// `{"conv_channels":[8,16,32],"hidden":32}` (the form every earlier manifest carries), and
/// unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShelfNetConfig {
    /// Output channels of each conv block (two or three blocks).
    pub conv_channels: Vec<usize>,
    /// Width of the hidden fully connected layer.
    pub hidden: usize,
    /// Side of the square conv kernels (odd; "same" padding keeps the spatial size).
    #[serde(default = "default_kernel", skip_serializing_if = "is_default_kernel")]
    pub kernel_size: usize,
    /// Channels of the input images (3 for shelf crops, 1 for grey digits).
    #[serde(
        default = "default_input_channels",
        skip_serializing_if = "is_default_input_channels"
    )]
    pub input_channels: usize,
    /// Side of the square input images, in pixels.
    #[serde(
        default = "default_image_size",
        skip_serializing_if = "is_default_image_size"
    )]
    pub image_size: usize,
    /// Number of output classes.
    #[serde(
        default = "default_classes",
        skip_serializing_if = "is_default_classes"
    )]
    pub num_classes: usize,
}

impl Default for ShelfNetConfig {
    /// The standard net, same as [`ShelfNetConfig::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl ShelfNetConfig {
    /// The standard shelf-slot net: 3×64×64 crops, conv blocks of 8, 16 and 32 channels (3×3
    /// kernels), hidden width 32, 2 classes (71,666 parameters).
    pub fn new() -> Self {
        Self {
            conv_channels: vec![8, 16, 32],
            hidden: 32,
            kernel_size: default_kernel(),
            input_channels: CHANNELS,
            image_size: IMAGE_SIZE,
            num_classes: NUM_CLASSES,
        }
    }

    /// The "CNN" of McMahan et al. (2017), *Communication-Efficient Learning of Deep Networks
    /// from Decentralized Data*, §3: two 5×5 conv layers of 32 and 64 channels, each followed
    /// by 2×2 max pooling, a 512-unit fully connected ReLU layer and a softmax output, on
    /// 1×28×28 images with 10 classes (1,663,370 parameters, as the paper states).
    pub fn mcmahan_cnn() -> Self {
        Self {
            conv_channels: vec![32, 64],
            hidden: 512,
            kernel_size: 5,
            input_channels: 1,
            image_size: 28,
            num_classes: 10,
        }
    }

    /// Replaces the conv block widths.
    pub fn with_conv_channels(mut self, channels: impl Into<Vec<usize>>) -> Self {
        self.conv_channels = channels.into();
        self
    }

    /// Replaces the hidden width.
    pub fn with_hidden(mut self, hidden: usize) -> Self {
        self.hidden = hidden;
        self
    }

    /// Replaces the input shape (`channels × size × size`).
    pub fn with_input(mut self, channels: usize, size: usize) -> Self {
        self.input_channels = channels;
        self.image_size = size;
        self
    }

    /// Replaces the number of classes.
    pub fn with_classes(mut self, classes: usize) -> Self {
        self.num_classes = classes;
        self
    }

    /// Replaces the kernel size.
    pub fn with_kernel_size(mut self, kernel: usize) -> Self {
        self.kernel_size = kernel;
        self
    }

    /// Checks the configuration is within the supported range.
    pub fn validate(&self) -> Result<(), ModelError> {
        let invalid = |msg: String| Err(ModelError::InvalidConfig(msg));
        if !CONV_BLOCKS.contains(&self.conv_channels.len()) {
            return invalid(format!(
                "{} conv blocks, expected {} to {}",
                self.conv_channels.len(),
                CONV_BLOCKS.start(),
                CONV_BLOCKS.end()
            ));
        }
        for (i, &c) in self.conv_channels.iter().enumerate() {
            if c == 0 || c > MAX_CONV_CHANNELS {
                return invalid(format!(
                    "conv block {} has {c} channels, expected 1..={MAX_CONV_CHANNELS}",
                    i + 1
                ));
            }
        }
        if self.hidden == 0 || self.hidden > MAX_HIDDEN {
            return invalid(format!(
                "hidden width is {}, expected 1..={MAX_HIDDEN}",
                self.hidden
            ));
        }
        if self.kernel_size > MAX_KERNEL || self.kernel_size.is_multiple_of(2) {
            return invalid(format!(
                "kernel size is {}, expected an odd size up to {MAX_KERNEL}",
                self.kernel_size
            ));
        }
        if self.input_channels == 0 || self.input_channels > MAX_INPUT_CHANNELS {
            return invalid(format!(
                "{} input channels, expected 1..={MAX_INPUT_CHANNELS}",
                self.input_channels
            ));
        }
        let shrink = 1usize << self.conv_channels.len();
        if self.image_size == 0
            || self.image_size > MAX_IMAGE_SIZE
            || !self.image_size.is_multiple_of(shrink)
        {
            return invalid(format!(
                "image size is {}, expected a multiple of {shrink} up to {MAX_IMAGE_SIZE}",
                self.image_size
            ));
        }
        if self.num_classes < 2 || self.num_classes > MAX_CLASSES {
            return invalid(format!(
                "{} classes, expected 2..={MAX_CLASSES}",
                self.num_classes
            ));
        }
        if self.flat_features() > MAX_FLAT_FEATURES {
            return invalid(format!(
                "{} features enter the first linear layer, at most {MAX_FLAT_FEATURES} allowed",
                self.flat_features()
            ));
        }
        Ok(())
    }

    /// Whether this net takes shelf crops (3×64×64) and answers stocked/empty, the only input
    /// a store node has.
    pub fn is_shelf_classifier(&self) -> bool {
        self.input_channels == CHANNELS
            && self.image_size == IMAGE_SIZE
            && self.num_classes == NUM_CLASSES
    }

    /// `f32` values per input image (`channels × size × size`).
    pub fn input_numel(&self) -> usize {
        self.input_channels * self.image_size * self.image_size
    }

    /// Spatial side after the conv blocks (each halves it).
    pub fn feature_size(&self) -> usize {
        self.image_size >> self.conv_channels.len()
    }

    /// Number of features entering the first fully connected layer
    /// (`last conv channels × feature_size²`, 2048 for the standard net).
    pub fn flat_features(&self) -> usize {
        let last = self.conv_channels.last().copied().unwrap_or(0);
        last * self.feature_size() * self.feature_size()
    }

    /// Builds a freshly initialised network on `device`. Parameters are initialised lazily by
    /// Burn (on first use) from the device's random generator.
    pub fn init(&self, device: &Device) -> Result<ShelfNet, ModelError> {
        self.validate()?;
        let k = self.kernel_size;
        let pad = k / 2;
        let conv = |c_in: usize, c_out: usize| {
            Conv2dConfig::new([c_in, c_out], [k, k])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .init(device)
        };
        let c = &self.conv_channels;
        Ok(ShelfNet {
            conv1: conv(self.input_channels, c[0]),
            conv2: conv(c[0], c[1]),
            conv3: c.get(2).map(|&c3| conv(c[1], c3)),
            fc1: LinearConfig::new(self.flat_features(), self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, self.num_classes).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            relu: Relu::new(),
        })
    }
}

/// ShelfNet: `2–3 x [conv k×k "same" -> ReLU -> maxpool 2]` then `linear -> ReLU -> linear`.
///
/// Parameter paths (the names used in safetensors files) are `conv1.weight`, `conv1.bias`, ...,
/// `fc2.bias`; see [`crate::parameter_layout`]. Linear weights use Burn's `[d_input, d_output]`
/// layout.
#[derive(Module, Debug)]
pub struct ShelfNet {
    pub(crate) conv1: Conv2d,
    pub(crate) conv2: Conv2d,
    pub(crate) conv3: Option<Conv2d>,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) pool: MaxPool2d,
    pub(crate) relu: Relu,
}

impl ShelfNet {
    /// Maps a batch of images to class logits.
    ///
    /// Shapes are for the standard configuration (`[8, 16, 32]`, hidden 32).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.run(images, Pooling::Module)
    }

    /// The same logits as [`forward`](Self::forward), bit for bit, computed for inference: the
    /// 2×2 max pooling is a reshape and two maxima over the window axes instead of Burn's
    /// pooling op, which also records an `i64` index per output for a backward pass that
    /// inference never runs. On the CPU backend that makes the standard net's inference about
    /// a fifth faster (`benches/README.md`); for training it is slower (the maxima's backward
    /// pass scatters twice), so training keeps [`forward`](Self::forward).
    pub fn infer(&self, images: Tensor<4>) -> Tensor<2> {
        self.run(images, Pooling::Reshape)
    }

    fn run(&self, images: Tensor<4>, pooling: Pooling) -> Tensor<2> {
        // [batch, 3, 64, 64]
        let x = self.block(&self.conv1, images, pooling);
        // [batch, 8, 32, 32]
        let x = self.block(&self.conv2, x, pooling);
        // [batch, 16, 16, 16]
        let x = match &self.conv3 {
            Some(conv3) => self.block(conv3, x, pooling),
            None => x,
        };
        // [batch, 32, 8, 8]
        let [batch, channels, height, width] = x.dims();
        let x = x.reshape([batch, channels * height * width]);
        // [batch, 2048]
        let x = self.relu.forward(self.fc1.forward(x));
        // [batch, 32]
        self.fc2.forward(x)
        // [batch, 2]
    }

    /// conv k×k (same size) -> ReLU -> 2x2 max pool (halves height and width).
    ///
    /// Computed as pool then ReLU: ReLU is monotone, so `max(relu(a), relu(b), ..) =
    /// relu(max(a, b, ..))` exactly, and the gradient reaches the same element; ReLU then runs
    /// on a quarter of the elements (and its backward pass too).
    fn block(&self, conv: &Conv2d, x: Tensor<4>, pooling: Pooling) -> Tensor<4> {
        let x = conv.forward(x);
        let pooled = match pooling {
            Pooling::Module => self.pool.forward(x),
            Pooling::Reshape => {
                // Sides are even (validated: a multiple of 2^blocks), so the windows tile the
                // plane exactly: [n, c, h, w] -> [n, c, h/2, 2, w/2, 2], max over the 2s.
                let [n, c, h, w] = x.dims();
                x.reshape([n, c, h / 2, 2, w / 2, 2])
                    .max_dim(5)
                    .max_dim(3)
                    .reshape([n, c, h / 2, w / 2])
            }
        };
        self.relu.forward(pooled)
    }
}

/// How [`ShelfNet`] computes its 2×2 max pooling; both give the same values.
#[derive(Clone, Copy, Debug)]
enum Pooling {
    /// Burn's `MaxPool2d` (differentiable through recorded indices).
    Module,
    /// Reshape and maxima over the window axes (inference).
    Reshape,
}
