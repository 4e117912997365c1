//! Batched inference and evaluation.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::device::ComputeDevice;
use crate::model::{ShelfNet, ShelfNetConfig};
use crate::params::unflatten;
use crate::train::check_examples;
use crate::{CHANNELS, IMAGE_NUMEL, IMAGE_SIZE, ModelError, catch_backend_panic};

/// Images per forward pass in [`LoadedModel::predict`].
pub const INFERENCE_BATCH: usize = 256;

/// A network built once on a device, for repeated inference (a node classifying frames).
///
/// `Send + Sync` (Burn 0.22 modules and devices are), so it can sit in an `Arc` shared by
/// request handlers; [`predict`](Self::predict) takes `&self`.
#[derive(Debug)]
pub struct LoadedModel {
    model: ShelfNet,
    device: Device,
    config: ShelfNetConfig,
}

impl LoadedModel {
    /// Builds the network for `config` with `params` on `dev` (inference mode, no autodiff).
    pub fn new(
        dev: &ComputeDevice,
        config: &ShelfNetConfig,
        params: &[f32],
    ) -> Result<Self, ModelError> {
        let device = dev.device().clone();
        let model = unflatten(config, params, &device)?;
        Ok(Self {
            model: model.valid(),
            device,
            config: config.clone(),
        })
    }

    /// The architecture configuration the model was built with.
    pub fn config(&self) -> &ShelfNetConfig {
        &self.config
    }

    /// Class ids (argmax of the logits) for `n * 3 * 64 * 64` image values; empty for empty
    /// input.
    pub fn predict(&self, images: &[f32]) -> Result<Vec<u8>, ModelError> {
        let n = check_examples(images, None)?;
        let mut classes = Vec::with_capacity(n);
        catch_backend_panic("inference", || {
            for chunk in images.chunks(INFERENCE_BATCH * IMAGE_NUMEL) {
                let batch = chunk.len() / IMAGE_NUMEL;
                let x = Tensor::<4>::from_data(
                    TensorData::new(chunk.to_vec(), [batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE]),
                    &self.device,
                );
                // [batch, 2] -> [batch, 1]
                let argmax = self.model.forward(x).argmax(1);
                let ids = argmax
                    .try_into_vec_as::<i64>()
                    .map_err(|err| ModelError::Backend(format!("reading predictions: {err}")))?;
                for id in ids {
                    let class = u8::try_from(id)
                        .map_err(|_| ModelError::Backend(format!("argmax returned class {id}")))?;
                    classes.push(class);
                }
            }
            Ok(())
        })?;
        Ok(classes)
    }

    /// Fraction of `labels` predicted correctly (in `[0, 1]`); needs at least one example.
    pub fn evaluate(&self, images: &[f32], labels: &[u8]) -> Result<f32, ModelError> {
        let n = check_examples(images, Some(labels))?;
        if n == 0 {
            return Err(ModelError::InvalidInput(
                "evaluation needs at least one example".to_string(),
            ));
        }
        let predicted = self.predict(images)?;
        let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
        Ok(correct as f32 / n as f32)
    }
}

/// Class ids for `images` with the model `params`; see [`LoadedModel::predict`].
pub fn predict(
    dev: &ComputeDevice,
    config: &ShelfNetConfig,
    params: &[f32],
    images: &[f32],
) -> Result<Vec<u8>, ModelError> {
    check_examples(images, None)?;
    LoadedModel::new(dev, config, params)?.predict(images)
}

/// Accuracy of the model `params` on labelled images; see [`LoadedModel::evaluate`].
pub fn evaluate(
    dev: &ComputeDevice,
    config: &ShelfNetConfig,
    params: &[f32],
    images: &[f32],
    labels: &[u8],
) -> Result<f32, ModelError> {
    check_examples(images, Some(labels))?;
    LoadedModel::new(dev, config, params)?.evaluate(images, labels)
}
