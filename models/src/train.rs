//! Local training: a few SGD steps on a node's labelled crops, starting from the global model,
//! optionally with FedProx's proximal term (Li et al., 2020) holding the weights near it.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::device::ComputeDevice;
use crate::model::{ShelfNet, ShelfNetConfig};
use crate::params::{check_params, flatten, parameter_layout, unflatten};
use crate::{ModelError, catch_backend_panic};

/// Momentum of the SGD optimiser. The momentum buffer starts at zero on every call.
pub const SGD_MOMENTUM: f64 = 0.9;
/// Largest accepted minibatch.
pub const MAX_BATCH_SIZE: usize = 4096;
/// Largest accepted proximal coefficient μ (FedProx uses 0.001–1; far beyond that the local
/// steps cannot move the weights at all).
pub const MAX_PROXIMAL_MU: f64 = 1000.0;

/// Hyper-parameters of one local training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSettings {
    /// Number of minibatch steps (must be positive).
    pub steps: usize,
    /// Examples per minibatch; capped at the number of examples.
    pub batch_size: usize,
    /// SGD learning rate (positive and finite).
    pub learning_rate: f64,
    /// Seeds the minibatch order; the same inputs and seed give the same result on one device.
    pub seed: u64,
    /// FedProx's proximal coefficient μ: the loss gains μ/2 · ‖w − w₀‖² (w₀ the base), which
    /// bounds how far local steps drift from the global model on heterogeneous stores.
    /// 0 (plain local SGD, FedAvg's client) to [`MAX_PROXIMAL_MU`].
    pub proximal_mu: f64,
}

/// Result of [`train_local`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// The trained flat parameter vector (same layout as the input).
    pub params: Vec<f32>,
    /// Mean minibatch cross-entropy over all steps (measured before each update).
    pub mean_loss: f32,
    /// `steps * effective batch size`; examples may repeat across epochs.
    pub examples_seen: usize,
}

/// Trains from `base` on the given examples and returns the new parameters.
///
/// Manual loop: the model lives on `dev` with autodiff enabled; each step takes the next
/// `batch_size` indices of a seeded shuffled order (reshuffled at every epoch boundary), computes
/// the cross-entropy of the logits (plus μ/2 · ‖w − base‖² when `proximal_mu` is positive),
/// back-propagates, and takes an SGD step with momentum [`SGD_MOMENTUM`] (no dampening, no
/// weight decay).
///
/// Inputs are validated first; every failure is a [`ModelError`]. Synchronous and CPU/GPU bound:
/// call it from a blocking thread.
pub fn train_local(
    dev: &ComputeDevice,
    config: &ShelfNetConfig,
    base: &[f32],
    images: &[f32],
    labels: &[u8],
    settings: &TrainSettings,
) -> Result<TrainOutcome, ModelError> {
    config.validate()?;
    check_params(&parameter_layout(config), base)?;
    let n = check_examples(config, images, Some(labels))?;
    if n == 0 {
        return Err(ModelError::InvalidInput(
            "training needs at least one example".to_string(),
        ));
    }
    if settings.steps == 0 {
        return Err(ModelError::InvalidSettings(
            "steps must be positive".to_string(),
        ));
    }
    if settings.batch_size == 0 || settings.batch_size > MAX_BATCH_SIZE {
        return Err(ModelError::InvalidSettings(format!(
            "batch size is {}, expected 1..={MAX_BATCH_SIZE}",
            settings.batch_size
        )));
    }
    if !(settings.learning_rate.is_finite() && settings.learning_rate > 0.0) {
        return Err(ModelError::InvalidSettings(format!(
            "learning rate is {}, expected a positive finite number",
            settings.learning_rate
        )));
    }
    if !(settings.proximal_mu.is_finite()
        && (0.0..=MAX_PROXIMAL_MU).contains(&settings.proximal_mu))
    {
        return Err(ModelError::InvalidSettings(format!(
            "proximal mu is {}, expected 0..={MAX_PROXIMAL_MU}",
            settings.proximal_mu
        )));
    }
    let batch = settings.batch_size.min(n);
    let device = dev.device().clone().autodiff();
    let model = unflatten(config, base, &device)?;
    let (params, mean_loss) = catch_backend_panic("training", || {
        run_sgd(
            model, config, &device, base, images, labels, batch, settings,
        )
    })?;
    if !mean_loss.is_finite() {
        return Err(ModelError::Diverged(format!("mean loss is {mean_loss}")));
    }
    if let Some(index) = params.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::Diverged(format!(
            "parameter {index} is not finite"
        )));
    }
    Ok(TrainOutcome {
        params,
        mean_loss,
        examples_seen: settings.steps * batch,
    })
}

/// The training loop proper; inputs are already validated.
#[allow(clippy::too_many_arguments)]
fn run_sgd(
    mut model: ShelfNet,
    config: &ShelfNetConfig,
    device: &Device,
    base: &[f32],
    images: &[f32],
    labels: &[u8],
    batch: usize,
    settings: &TrainSettings,
) -> Result<(Vec<f32>, f32), ModelError> {
    let mut optim = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(SGD_MOMENTUM)
                .with_dampening(0.0),
        ))
        .init();
    let loss_fn = CrossEntropyLoss::new(None, device);
    // The base weights as constants (no gradient), one flat tensor per parameter, in the
    // canonical order the visitor walks.
    let anchor = (settings.proximal_mu > 0.0).then(|| {
        let mut offset = 0;
        parameter_layout(config)
            .iter()
            .map(|spec| {
                let values = base[offset..offset + spec.numel()].to_vec();
                offset += spec.numel();
                Tensor::<1>::from_data(TensorData::new(values, [spec.numel()]), device)
            })
            .collect::<Vec<_>>()
    });
    let mut order = EpochSampler::new(labels.len(), settings.seed);
    let numel = config.input_numel();
    let (channels, side) = (config.input_channels, config.image_size);
    let mut loss_sum = 0.0f64;
    for _ in 0..settings.steps {
        // Gathered straight into the buffers the tensors take over: no copy of the batch.
        let mut batch_images = Vec::with_capacity(batch * numel);
        let mut batch_labels = Vec::with_capacity(batch);
        for _ in 0..batch {
            let i = order.next_index();
            batch_images.extend_from_slice(&images[i * numel..(i + 1) * numel]);
            batch_labels.push(i64::from(labels[i]));
        }
        let x = Tensor::<4>::from_data(
            TensorData::new(batch_images, [batch, channels, side, side]),
            device,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(batch_labels, [batch]), device);
        let cross_entropy = loss_fn.forward(model.forward(x), y);
        let loss = match &anchor {
            Some(anchor) => {
                let distance = squared_distance(&model, anchor)?;
                cross_entropy.clone() + distance.mul_scalar(settings.proximal_mu / 2.0)
            }
            None => cross_entropy.clone(),
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // The reported loss is the task's (cross-entropy), comparable with and without μ.
        let loss_value = cross_entropy
            .try_into_scalar::<f32>()
            .map_err(|err| ModelError::Backend(format!("reading the loss: {err}")))?;
        loss_sum += f64::from(loss_value);
        model = optim.step(settings.learning_rate, model, grads);
    }
    let mean_loss = (loss_sum / settings.steps as f64) as f32;
    Ok((flatten(&model)?, mean_loss))
}

/// ‖w − anchor‖² over every parameter of `model` (tracked by autodiff, so its gradient is
/// 2(w − anchor)).
fn squared_distance(model: &ShelfNet, anchor: &[Tensor<1>]) -> Result<Tensor<1>, ModelError> {
    struct Distance<'a> {
        anchor: &'a [Tensor<1>],
        next: usize,
        sum: Option<Tensor<1>>,
        error: Option<ModelError>,
    }
    impl ModuleVisitor for Distance<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(anchor) = self.anchor.get(self.next) else {
                self.error = Some(ModelError::Backend(format!(
                    "the model has more than the {} parameter tensors of its layout",
                    self.anchor.len()
                )));
                return;
            };
            self.next += 1;
            let weights = param.val();
            let dims = weights.dims();
            let term = (weights - anchor.clone().reshape(dims)).square().sum();
            self.sum = Some(match self.sum.take() {
                Some(sum) => sum + term,
                None => term,
            });
        }
    }
    let mut visitor = Distance {
        anchor,
        next: 0,
        sum: None,
        error: None,
    };
    model.visit(&mut visitor);
    if let Some(error) = visitor.error {
        return Err(error);
    }
    match visitor.sum {
        Some(sum) if visitor.next == anchor.len() => Ok(sum),
        _ => Err(ModelError::Backend(format!(
            "the model has {} parameter tensors, its layout {}",
            visitor.next,
            anchor.len()
        ))),
    }
}

/// Validates an image buffer for `config`'s input shape (and labels, when given, against its
/// classes) and returns the number of examples.
pub(crate) fn check_examples(
    config: &ShelfNetConfig,
    images: &[f32],
    labels: Option<&[u8]>,
) -> Result<usize, ModelError> {
    let numel = config.input_numel();
    if !images.len().is_multiple_of(numel) {
        return Err(ModelError::InvalidInput(format!(
            "image buffer has {} values, not a multiple of {numel} ({}x{}x{})",
            images.len(),
            config.input_channels,
            config.image_size,
            config.image_size
        )));
    }
    let n = images.len() / numel;
    if let Some(index) = images.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::InvalidInput(format!(
            "pixel value {index} is not finite"
        )));
    }
    if let Some(labels) = labels {
        if labels.len() != n {
            return Err(ModelError::InvalidInput(format!(
                "{} labels for {n} images",
                labels.len()
            )));
        }
        if let Some(index) = labels
            .iter()
            .position(|&l| usize::from(l) >= config.num_classes)
        {
            return Err(ModelError::InvalidInput(format!(
                "label {index} is {}, expected a class below {}",
                labels[index], config.num_classes
            )));
        }
    }
    Ok(n)
}

/// Deterministic epoch shuffling: a Fisher-Yates permutation per epoch from a SplitMix64
/// stream, so minibatches depend only on the seed and the number of examples.
struct EpochSampler {
    order: Vec<usize>,
    position: usize,
    state: u64,
}

impl EpochSampler {
    fn new(n: usize, seed: u64) -> Self {
        Self {
            order: (0..n).collect(),
            position: n,
            state: seed,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_index(&mut self) -> usize {
        if self.position == self.order.len() {
            for i in (1..self.order.len()).rev() {
                // The modulo bias is below 2^-40 for any realistic n; irrelevant here.
                let j = (self.next_u64() % (i as u64 + 1)) as usize;
                self.order.swap(i, j);
            }
            self.position = 0;
        }
        let index = self.order[self.position];
        self.position += 1;
        index
    }
}

#[cfg(test)]
mod sampler_tests {
    use super::EpochSampler;

    #[test]
    fn every_epoch_is_a_permutation_and_seeds_differ() {
        let mut a = EpochSampler::new(10, 7);
        let mut epoch: Vec<usize> = (0..10).map(|_| a.next_index()).collect();
        epoch.sort_unstable();
        assert_eq!(epoch, (0..10).collect::<Vec<_>>());
        let first: Vec<usize> = {
            let mut s = EpochSampler::new(10, 7);
            (0..30).map(|_| s.next_index()).collect()
        };
        let again: Vec<usize> = {
            let mut s = EpochSampler::new(10, 7);
            (0..30).map(|_| s.next_index()).collect()
        };
        let other: Vec<usize> = {
            let mut s = EpochSampler::new(10, 8);
            (0..30).map(|_| s.next_index()).collect()
        };
        assert_eq!(first, again);
        assert_ne!(first, other);
    }
}
