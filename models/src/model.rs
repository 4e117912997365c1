//! The ShelfNet module: three conv blocks and a two-layer classifier head.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use crate::{CHANNELS, IMAGE_SIZE, ModelError, NUM_CLASSES};

/// Largest channel count accepted per conv block; keeps a hostile configuration in a manifest
/// from asking for an absurd allocation.
pub const MAX_CONV_CHANNELS: usize = 256;
/// Largest accepted hidden width of the classifier head.
pub const MAX_HIDDEN: usize = 1024;
/// Number of conv blocks; each halves the spatial size.
pub const CONV_BLOCKS: usize = 3;
/// Spatial size after the conv blocks (`64 / 2^3 = 8`).
pub const FEATURE_SIZE: usize = IMAGE_SIZE >> CONV_BLOCKS;

/// Architecture hyper-parameters of ShelfNet. Serialised as JSON beside the weights and in
/// model manifests (`{"conv_channels":[8,16,32],"hidden":32}`).
#[derive(Config, Debug, PartialEq, Eq)]
pub struct ShelfNetConfig {
    /// Output channels of conv blocks 1, 2 and 3.
    #[config(default = "[8, 16, 32]")]
    pub conv_channels: [usize; CONV_BLOCKS],
    /// Width of the hidden fully connected layer.
    #[config(default = 32)]
    pub hidden: usize,
}

impl Default for ShelfNetConfig {
    /// The standard net, same as [`ShelfNetConfig::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl ShelfNetConfig {
    /// Checks the configuration is within the supported range.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (i, &c) in self.conv_channels.iter().enumerate() {
            if c == 0 || c > MAX_CONV_CHANNELS {
                return Err(ModelError::InvalidConfig(format!(
                    "conv block {} has {c} channels, expected 1..={MAX_CONV_CHANNELS}",
                    i + 1
                )));
            }
        }
        if self.hidden == 0 || self.hidden > MAX_HIDDEN {
            return Err(ModelError::InvalidConfig(format!(
                "hidden width is {}, expected 1..={MAX_HIDDEN}",
                self.hidden
            )));
        }
        Ok(())
    }

    /// Number of features entering the first fully connected layer
    /// (`conv_channels[2] * 8 * 8`, 2048 for the standard net).
    pub fn flat_features(&self) -> usize {
        self.conv_channels[CONV_BLOCKS - 1] * FEATURE_SIZE * FEATURE_SIZE
    }

    /// Builds a freshly initialised network on `device`. Parameters are initialised lazily by
    /// Burn (on first use) from the device's random generator.
    pub fn init(&self, device: &Device) -> Result<ShelfNet, ModelError> {
        self.validate()?;
        let [c1, c2, c3] = self.conv_channels;
        let conv = |c_in: usize, c_out: usize| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Ok(ShelfNet {
            conv1: conv(CHANNELS, c1),
            conv2: conv(c1, c2),
            conv3: conv(c2, c3),
            fc1: LinearConfig::new(self.flat_features(), self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, NUM_CLASSES).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            relu: Relu::new(),
        })
    }
}

/// ShelfNet: `3 x [conv 3x3 pad 1 -> ReLU -> maxpool 2]` then `linear -> ReLU -> linear`.
///
/// Parameter paths (the names used in safetensors files) are `conv1.weight`, `conv1.bias`, ...,
/// `fc2.bias`; see [`crate::parameter_layout`]. Linear weights use Burn's `[d_input, d_output]`
/// layout.
#[derive(Module, Debug)]
pub struct ShelfNet {
    pub(crate) conv1: Conv2d,
    pub(crate) conv2: Conv2d,
    pub(crate) conv3: Conv2d,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) pool: MaxPool2d,
    pub(crate) relu: Relu,
}

impl ShelfNet {
    /// Maps a batch of crops to class logits.
    ///
    /// Shapes are for the standard configuration (`[8, 16, 32]`, hidden 32).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        // [batch, 3, 64, 64]
        let x = self.block(&self.conv1, images);
        // [batch, 8, 32, 32]
        let x = self.block(&self.conv2, x);
        // [batch, 16, 16, 16]
        let x = self.block(&self.conv3, x);
        // [batch, 32, 8, 8]
        let [batch, channels, height, width] = x.dims();
        let x = x.reshape([batch, channels * height * width]);
        // [batch, 2048]
        let x = self.relu.forward(self.fc1.forward(x));
        // [batch, 32]
        self.fc2.forward(x)
        // [batch, 2]
    }

    /// conv 3x3 (same size) -> ReLU -> 2x2 max pool (halves height and width).
    fn block(&self, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        self.pool.forward(self.relu.forward(conv.forward(x)))
    }
}
