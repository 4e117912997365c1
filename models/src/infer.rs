//! Batched inference and evaluation.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::device::ComputeDevice;
use crate::model::{ShelfNet, ShelfNetConfig};
use crate::params::unflatten;
use crate::train::check_examples;
use crate::{ModelError, catch_backend_panic};

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

    /// Class ids (argmax of the logits) for `n` images of the configured input shape
    /// (`n * 3 * 64 * 64` values for the standard net); empty for empty input.
    pub fn predict(&self, images: &[f32]) -> Result<Vec<u8>, ModelError> {
        let n = check_examples(&self.config, images, None)?;
        let mut classes = Vec::with_capacity(n);
        self.for_each_batch(images, |logits| {
            // [batch, classes] -> [batch, 1]
            let ids = logits
                .argmax(1)
                .try_into_vec_as::<i64>()
                .map_err(|err| ModelError::Backend(format!("reading predictions: {err}")))?;
            for id in ids {
                let class = u8::try_from(id)
                    .map_err(|_| ModelError::Backend(format!("argmax returned class {id}")))?;
                classes.push(class);
            }
            Ok(())
        })?;
        Ok(classes)
    }

    /// Raw class logits, `n * num_classes` values (row per image), for comparing backends and
    /// implementations; empty for empty input.
    pub fn logits(&self, images: &[f32]) -> Result<Vec<f32>, ModelError> {
        let n = check_examples(&self.config, images, None)?;
        let mut out = Vec::with_capacity(n * self.config.num_classes);
        self.for_each_batch(images, |logits| {
            let values = logits
                .try_into_vec_as::<f32>()
                .map_err(|err| ModelError::Backend(format!("reading logits: {err}")))?;
            out.extend(values);
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs the forward pass on validated `images`, [`INFERENCE_BATCH`] at a time, handing
    /// each batch's `[batch, classes]` logits to `each`.
    fn for_each_batch(
        &self,
        images: &[f32],
        mut each: impl FnMut(Tensor<2>) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        let numel = self.config.input_numel();
        let (channels, side) = (self.config.input_channels, self.config.image_size);
        catch_backend_panic("inference", || {
            for chunk in images.chunks(INFERENCE_BATCH * numel) {
                let batch = chunk.len() / numel;
                let x = Tensor::<4>::from_data(
                    TensorData::new(chunk.to_vec(), [batch, channels, side, side]),
                    &self.device,
                );
                each(self.model.infer(x))?;
            }
            Ok(())
        })
    }

    /// Fraction of `labels` predicted correctly (in `[0, 1]`); needs at least one example.
    pub fn evaluate(&self, images: &[f32], labels: &[u8]) -> Result<f32, ModelError> {
        let n = check_examples(&self.config, images, Some(labels))?;
        if n == 0 {
            return Err(ModelError::InvalidInput(
                "evaluation needs at least one example".to_string(),
            ));
        }
        let predicted = self.predict(images)?;
        let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
        Ok(correct as f32 / n as f32)
    }

    /// Accuracy and mean cross-entropy of the model on labelled images, from one forward
    /// pass; needs at least one example. The loss moves smoothly where accuracy jumps (a net
    /// that answers one class for everything has accuracy 0.5 on a balanced split whether it
    /// is nearly right or badly wrong), so it is what compares two training runs.
    pub fn assess(&self, images: &[f32], labels: &[u8]) -> Result<Assessment, ModelError> {
        let n = check_examples(&self.config, images, Some(labels))?;
        if n == 0 {
            return Err(ModelError::InvalidInput(
                "evaluation needs at least one example".to_string(),
            ));
        }
        let classes = self.config.num_classes;
        let logits = self.logits(images)?;
        let (mut correct, mut loss) = (0usize, 0.0f64);
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let (best, _) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv { (i, v) } else { (bi, bv) }
                    });
            correct += usize::from(best == usize::from(label));
            // log-sum-exp around the largest logit, in f64.
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            loss += max + sum.ln() - f64::from(row[usize::from(label)]);
        }
        if !loss.is_finite() {
            return Err(ModelError::Backend(
                "the model's logits are not finite".to_string(),
            ));
        }
        Ok(Assessment {
            accuracy: correct as f32 / n as f32,
            mean_cross_entropy: loss / n as f64,
        })
    }
}

/// A model's quality on labelled data: see [`LoadedModel::assess`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assessment {
    /// Fraction predicted correctly, in `[0, 1]`.
    pub accuracy: f32,
    /// Mean cross-entropy (natural log) of the true class; `ln(classes)` for a uniform answer.
    pub mean_cross_entropy: f64,
}

/// Accuracy and loss of the model `params` on labelled images; see [`LoadedModel::assess`].
pub fn assess(
    dev: &ComputeDevice,
    config: &ShelfNetConfig,
    params: &[f32],
    images: &[f32],
    labels: &[u8],
) -> Result<Assessment, ModelError> {
    check_examples(config, images, Some(labels))?;
    LoadedModel::new(dev, config, params)?.assess(images, labels)
}

/// Class ids for `images` with the model `params`; see [`LoadedModel::predict`].
pub fn predict(
    dev: &ComputeDevice,
    config: &ShelfNetConfig,
    params: &[f32],
    images: &[f32],
) -> Result<Vec<u8>, ModelError> {
    check_examples(config, images, None)?;
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
    check_examples(config, images, Some(labels))?;
    LoadedModel::new(dev, config, params)?.evaluate(images, labels)
}
