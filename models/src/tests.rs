#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::params::module_tensors;
use crate::*;

fn standard() -> ShelfNetConfig {
    ShelfNetConfig::new()
}

/// Deterministic finite values, distinct from any Burn initialisation.
fn pattern(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32) * 0.618_034).sin() * 0.1)
        .collect()
}

/// `n` examples: class 0 ("stocked") are bright noisy crops, class 1 ("empty") dark ones.
fn bright_dark(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut images = Vec::with_capacity(n * IMAGE_NUMEL);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u8;
        let (lo, hi) = if label == 0 {
            (0.45, 0.95)
        } else {
            (0.05, 0.55)
        };
        images.extend((0..IMAGE_NUMEL).map(|_| rng.random_range(lo..hi)));
        labels.push(label);
    }
    (images, labels)
}

#[test]
fn layout_matches_num_parameters_and_standard_shapes() {
    let config = standard();
    let layout = parameter_layout(&config);
    let total: usize = layout.iter().map(TensorSpec::numel).sum();
    assert_eq!(total, num_parameters(&config));
    assert_eq!(total, 71_666);
    let names: Vec<&str> = layout.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "conv2.bias",
            "conv3.weight",
            "conv3.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias"
        ]
    );
    assert_eq!(layout[0].shape, [8, 3, 3, 3]);
    assert_eq!(layout[6].shape, [2048, 32]);
    assert_eq!(layout[8].shape, [32, 2]);
}

#[test]
fn layout_names_and_shapes_are_burn_module_paths() {
    for config in [
        standard(),
        ShelfNetConfig::new()
            .with_conv_channels([4, 6, 10])
            .with_hidden(7),
    ] {
        let params = pattern(num_parameters(&config));
        let model = unflatten(&config, &params, &Device::flex()).unwrap();
        let burn_side: Vec<(String, Vec<usize>)> = module_tensors(&model)
            .unwrap()
            .into_iter()
            .map(|(name, shape, _)| (name, shape))
            .collect();
        let ours: Vec<(String, Vec<usize>)> = parameter_layout(&config)
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        assert_eq!(burn_side, ours);
    }
}

#[test]
fn flatten_of_unflatten_is_exact() {
    let config = standard();
    let mut params = pattern(num_parameters(&config));
    params[0] = f32::MIN_POSITIVE;
    params[1] = -0.0;
    params[2] = 1.0e30;
    let model = unflatten(&config, &params, &Device::flex()).unwrap();
    let back = flatten(&model).unwrap();
    assert_eq!(back.len(), params.len());
    assert!(
        back.iter()
            .zip(&params)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    // Also through an autodiff device.
    let model = unflatten(&config, &params, &Device::flex().autodiff()).unwrap();
    assert_eq!(flatten(&model).unwrap(), params);
}

#[test]
fn unflatten_rejects_wrong_length_and_non_finite_values() {
    let config = standard();
    let n = num_parameters(&config);
    let err = unflatten(&config, &[0.0; 12], &Device::flex()).unwrap_err();
    assert!(matches!(err, ModelError::ParameterCount { actual: 12, expected } if expected == n));
    assert_eq!(
        err.to_string(),
        format!("parameter vector has 12 values, expected {n}")
    );
    assert!(unflatten(&config, &vec![0.0; n + 1], &Device::flex()).is_err());
    let mut params = pattern(n);
    params[5] = f32::NAN;
    assert!(matches!(
        unflatten(&config, &params, &Device::flex()),
        Err(ModelError::NonFiniteParameter { index: 5 })
    ));
    let bad_config = ShelfNetConfig::new().with_hidden(0);
    assert!(matches!(
        unflatten(&bad_config, &[], &Device::flex()),
        Err(ModelError::InvalidConfig(_))
    ));
}

#[test]
fn init_is_deterministic_per_seed_and_differs_across_seeds() {
    let config = standard();
    let a = init_parameters(&config, 7).unwrap();
    let b = init_parameters(&config, 7).unwrap();
    let c = init_parameters(&config, 8).unwrap();
    assert_eq!(a.len(), num_parameters(&config));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().all(|v| v.is_finite()));
    // Kaiming-uniform weights are not all zero and are bounded.
    assert!(a.iter().any(|v| *v != 0.0));
    assert!(a.iter().all(|v| v.abs() < 1.0));
}

#[test]
fn safetensors_roundtrip_is_exact_with_module_path_names() {
    let config = standard();
    let layout = parameter_layout(&config);
    let params = init_parameters(&config, 3).unwrap();
    let bytes = to_safetensors(&layout, &params).unwrap();
    assert_eq!(
        to_safetensors(&layout, &params).unwrap(),
        bytes,
        "deterministic"
    );
    let back = from_safetensors(&layout, &bytes).unwrap();
    assert!(
        back.iter()
            .zip(&params)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    assert_eq!(back.len(), params.len());

    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    names.sort();
    let model = unflatten(&config, &params, &Device::flex()).unwrap();
    let mut burn_names: Vec<String> = module_tensors(&model)
        .unwrap()
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    burn_names.sort();
    assert_eq!(names, burn_names);
    for spec in &layout {
        let view = file.tensor(&spec.name).unwrap();
        assert_eq!(view.dtype(), Dtype::F32);
        assert_eq!(view.shape(), spec.shape.as_slice());
    }
}

#[test]
fn from_safetensors_refuses_mismatches_and_garbage() {
    let config = standard();
    let layout = parameter_layout(&config);
    let params = pattern(num_parameters(&config));
    let bytes = to_safetensors(&layout, &params).unwrap();

    // Wrong shape: the file is read against a layout with another hidden width.
    let other = parameter_layout(&ShelfNetConfig::new().with_hidden(16));
    let err = from_safetensors(&other, &bytes).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");

    // Missing tensor: the layout expects one the file lacks.
    let mut longer = layout.clone();
    longer.push(TensorSpec {
        name: "fc3.bias".to_string(),
        shape: vec![2],
    });
    let err = from_safetensors(&longer, &bytes).unwrap_err();
    assert!(err.to_string().contains("missing tensor"), "{err}");

    // Extra tensor: the file holds one the layout does not name.
    let shorter = &layout[..layout.len() - 1];
    let err = from_safetensors(shorter, &bytes).unwrap_err();
    assert!(err.to_string().contains("unexpected tensor"), "{err}");

    // Wrong dtype under the right name and shape.
    let raw = vec![0u8; 2 * 8];
    let view = TensorView::new(Dtype::F64, vec![2], &raw).unwrap();
    let f64_file = safetensors::serialize([("fc2.bias", view)], None).unwrap();
    let single = [TensorSpec {
        name: "fc2.bias".to_string(),
        shape: vec![2],
    }];
    let err = from_safetensors(&single, &f64_file).unwrap_err();
    assert!(err.to_string().contains("dtype"), "{err}");

    // Garbage: empty, short, random, truncated, and a header length pointing past the end.
    let mut rng = StdRng::seed_from_u64(1);
    let random: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    let mut huge_header = u64::MAX.to_le_bytes().to_vec();
    huge_header.extend_from_slice(b"{}");
    let mut bad_json = 8u64.to_le_bytes().to_vec();
    bad_json.extend_from_slice(b"not json");
    for garbage in [
        &[][..],
        &[1, 2, 3][..],
        &random[..],
        &bytes[..bytes.len() / 2],
        &bytes[..bytes.len() - 1],
        &huge_header[..],
        &bad_json[..],
    ] {
        assert!(matches!(
            from_safetensors(&layout, garbage),
            Err(ModelError::Safetensors(_))
        ));
    }

    // Encoding refuses a vector of the wrong length and duplicate names.
    assert!(to_safetensors(&layout, &params[1..]).is_err());
    let dup = [single[0].clone(), single[0].clone()];
    assert!(to_safetensors(&dup, &[0.0; 4]).is_err());
}

#[test]
fn training_learns_bright_versus_dark() {
    let dev = select_device(BackendChoice::Cpu).unwrap();
    let config = standard();
    let base = init_parameters(&config, 11).unwrap();
    let (images, labels) = bright_dark(64, 5);
    let (test_images, test_labels) = bright_dark(32, 6);
    let settings = TrainSettings {
        steps: 15,
        batch_size: 16,
        learning_rate: 0.05,
        seed: 1,
        proximal_mu: 0.0,
    };
    let first = train_local(&dev, &config, &base, &images, &labels, &settings).unwrap();
    assert_eq!(first.examples_seen, 15 * 16);
    assert_eq!(first.params.len(), base.len());
    assert_ne!(first.params, base);
    let second = train_local(
        &dev,
        &config,
        &first.params,
        &images,
        &labels,
        &TrainSettings {
            seed: 2,
            ..settings.clone()
        },
    )
    .unwrap();
    assert!(
        second.mean_loss < first.mean_loss,
        "loss did not fall: {} then {}",
        first.mean_loss,
        second.mean_loss
    );
    let accuracy = evaluate(&dev, &config, &second.params, &test_images, &test_labels).unwrap();
    assert!(
        accuracy >= 0.95,
        "accuracy {accuracy}, losses {} {}",
        first.mean_loss,
        second.mean_loss
    );
    let predicted = predict(&dev, &config, &second.params, &test_images).unwrap();
    assert_eq!(predicted.len(), 32);
    assert!(predicted.iter().all(|&c| usize::from(c) < NUM_CLASSES));
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let dev = ComputeDevice::cpu();
    let config = ShelfNetConfig::new()
        .with_conv_channels([2, 2, 2])
        .with_hidden(4);
    let base = init_parameters(&config, 1).unwrap();
    let (images, labels) = bright_dark(6, 9);
    let settings = TrainSettings {
        steps: 3,
        batch_size: 4,
        learning_rate: 0.01,
        seed: 42,
        proximal_mu: 0.0,
    };
    let a = train_local(&dev, &config, &base, &images, &labels, &settings).unwrap();
    let b = train_local(&dev, &config, &base, &images, &labels, &settings).unwrap();
    assert_eq!(a, b);
    // Batch larger than the data set is capped.
    let big = TrainSettings {
        batch_size: 100,
        steps: 1,
        ..settings
    };
    let c = train_local(&dev, &config, &base, &images, &labels, &big).unwrap();
    assert_eq!(c.examples_seen, 6);
}

/// FedProx: the proximal term adds μ(w − w₀) to each step's gradient. The first step starts at
/// w₀, so it is plain SGD; with momentum the second step then differs from plain SGD by exactly
/// −lr·μ·(w₁ − w₀). Over many steps the term keeps the weights nearer the base.
#[test]
fn the_proximal_term_pulls_local_training_towards_the_base() {
    let dev = ComputeDevice::cpu();
    let config = standard();
    let base = init_parameters(&config, 21).unwrap();
    let (images, labels) = bright_dark(48, 9);
    let plain = TrainSettings {
        steps: 1,
        batch_size: 16,
        learning_rate: 0.05,
        seed: 3,
        proximal_mu: 0.0,
    };
    let mu = 10.0;
    let run = |settings: &TrainSettings| {
        train_local(&dev, &config, &base, &images, &labels, settings)
            .unwrap()
            .params
    };
    let one_plain = run(&plain);
    let one_prox = run(&TrainSettings {
        proximal_mu: mu,
        ..plain.clone()
    });
    assert_eq!(one_plain, one_prox, "the first step starts at the base");
    let two_plain = run(&TrainSettings {
        steps: 2,
        ..plain.clone()
    });
    let two_prox = run(&TrainSettings {
        steps: 2,
        proximal_mu: mu,
        ..plain.clone()
    });
    let expected: Vec<f64> = one_plain
        .iter()
        .zip(&base)
        .map(|(w1, w0)| -plain.learning_rate * mu * f64::from(w1 - w0))
        .collect();
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-4, "the first step barely moved: {scale}");
    let worst = two_prox
        .iter()
        .zip(&two_plain)
        .zip(&expected)
        .map(|((q, p), e)| (f64::from(q - p) - e).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst <= 1e-3 * scale + 1e-6,
        "proximal step off by {worst} (expected differences up to {scale})"
    );

    let drift = |params: &[f32]| {
        params
            .iter()
            .zip(&base)
            .map(|(w, w0)| f64::from(w - w0).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let long = TrainSettings {
        steps: 30,
        ..plain.clone()
    };
    let free = drift(&run(&long));
    let held = drift(&run(&TrainSettings {
        proximal_mu: 1.0,
        ..long.clone()
    }));
    assert!(
        held < 0.9 * free,
        "drift with mu = 1: {held}, without: {free}"
    );
}

#[test]
fn training_rejects_bad_inputs() {
    let dev = ComputeDevice::cpu();
    let config = standard();
    let base = pattern(num_parameters(&config));
    let (images, labels) = bright_dark(2, 1);
    let ok = TrainSettings {
        steps: 1,
        batch_size: 2,
        learning_rate: 0.01,
        seed: 0,
        proximal_mu: 0.0,
    };
    let run = |base: &[f32], images: &[f32], labels: &[u8], s: &TrainSettings| {
        train_local(&dev, &config, base, images, labels, s)
    };
    assert!(matches!(
        run(&base[1..], &images, &labels, &ok),
        Err(ModelError::ParameterCount { .. })
    ));
    let mut nan_base = base.clone();
    nan_base[3] = f32::INFINITY;
    assert!(matches!(
        run(&nan_base, &images, &labels, &ok),
        Err(ModelError::NonFiniteParameter { index: 3 })
    ));
    assert!(matches!(
        run(&base, &images[1..], &labels, &ok),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(matches!(
        run(&base, &images, &labels[..1], &ok),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(matches!(
        run(&base, &images, &[0, 2], &ok),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(matches!(
        run(&base, &[], &[], &ok),
        Err(ModelError::InvalidInput(_))
    ));
    let mut nan_images = images.clone();
    nan_images[10] = f32::NAN;
    assert!(matches!(
        run(&base, &nan_images, &labels, &ok),
        Err(ModelError::InvalidInput(_))
    ));
    for bad in [
        TrainSettings {
            steps: 0,
            ..ok.clone()
        },
        TrainSettings {
            batch_size: 0,
            ..ok.clone()
        },
        TrainSettings {
            learning_rate: f64::NAN,
            ..ok.clone()
        },
        TrainSettings {
            learning_rate: -1.0,
            ..ok.clone()
        },
        TrainSettings {
            proximal_mu: -0.1,
            ..ok.clone()
        },
        TrainSettings {
            proximal_mu: f64::NAN,
            ..ok.clone()
        },
        TrainSettings {
            proximal_mu: MAX_PROXIMAL_MU * 2.0,
            ..ok.clone()
        },
    ] {
        assert!(matches!(
            run(&base, &images, &labels, &bad),
            Err(ModelError::InvalidSettings(_))
        ));
    }
}

#[test]
fn predict_and_evaluate_reject_bad_inputs() {
    let dev = ComputeDevice::cpu();
    let config = standard();
    let params = pattern(num_parameters(&config));
    let (images, labels) = bright_dark(3, 2);
    assert!(matches!(
        predict(&dev, &config, &params, &images[..IMAGE_NUMEL + 5]),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(matches!(
        predict(&dev, &config, &params[1..], &images),
        Err(ModelError::ParameterCount { .. })
    ));
    assert_eq!(
        predict(&dev, &config, &params, &[]).unwrap(),
        Vec::<u8>::new()
    );
    assert_eq!(predict(&dev, &config, &params, &images).unwrap().len(), 3);
    assert!(evaluate(&dev, &config, &params, &images[1..], &labels).is_err());
    assert!(evaluate(&dev, &config, &params, &images, &labels[..2]).is_err());
    assert!(evaluate(&dev, &config, &params, &images, &[0, 1, 7]).is_err());
    assert!(evaluate(&dev, &config, &params, &[], &[]).is_err());
    let accuracy = evaluate(&dev, &config, &params, &images, &labels).unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
}

#[test]
fn assess_gives_accuracy_and_a_loss_that_follows_the_logits() {
    let dev = ComputeDevice::cpu();
    let config = standard();
    let (images, labels) = bright_dark(6, 5);
    // All-zero weights: every logit is 0, so the loss is exactly ln 2 and argmax is class 0.
    let zeros = vec![0.0; num_parameters(&config)];
    let flat = assess(&dev, &config, &zeros, &images, &labels).unwrap();
    assert!(
        (flat.mean_cross_entropy - std::f64::consts::LN_2).abs() < 1e-6,
        "{flat:?}"
    );
    let zeros_expected = labels.iter().filter(|&&l| l == 0).count() as f32 / 6.0;
    assert!((flat.accuracy - zeros_expected).abs() < 1e-6, "{flat:?}");
    // The same figures as evaluate() and as the logits computed by hand.
    let params = pattern(num_parameters(&config));
    let loaded = LoadedModel::new(&dev, &config, &params).unwrap();
    let got = loaded.assess(&images, &labels).unwrap();
    assert_eq!(got.accuracy, loaded.evaluate(&images, &labels).unwrap());
    let logits = loaded.logits(&images).unwrap();
    let by_hand: f64 = logits
        .chunks_exact(2)
        .zip(&labels)
        .map(|(row, &l)| {
            let (a, b) = (f64::from(row[0]), f64::from(row[1]));
            (a.exp() + b.exp()).ln() - f64::from(row[usize::from(l)])
        })
        .sum::<f64>()
        / 6.0;
    assert!(
        (got.mean_cross_entropy - by_hand).abs() < 1e-6,
        "{got:?} vs {by_hand}"
    );
    assert!(assess(&dev, &config, &params, &[], &[]).is_err());
    assert!(assess(&dev, &config, &params, &images, &[0, 1, 7, 0, 0, 0]).is_err());
}

#[test]
fn inference_pooling_gives_the_training_forward_pass_logits_exactly() {
    let device = ComputeDevice::cpu().device().clone();
    for config in [standard(), ShelfNetConfig::mcmahan_cnn()] {
        let params = init_parameters(&config, 11).unwrap();
        let net = unflatten(&config, &params, &device).unwrap();
        let side = config.image_size;
        let mut rng = StdRng::seed_from_u64(3);
        let n = 5;
        let pixels: Vec<f32> = (0..n * config.input_numel())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let x = burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(pixels, [n, config.input_channels, side, side]),
            &device,
        );
        let trained = net
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let inferred = net.infer(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(trained.len(), n * config.num_classes);
        assert_eq!(trained, inferred, "{config:?}");
    }
}

#[test]
fn loaded_model_matches_predict_across_batches() {
    let dev = ComputeDevice::cpu();
    let config = ShelfNetConfig::new()
        .with_conv_channels([2, 2, 2])
        .with_hidden(4);
    let params = init_parameters(&config, 4).unwrap();
    let (images, _) = bright_dark(infer::INFERENCE_BATCH + 3, 3);
    let loaded = LoadedModel::new(&dev, &config, &params).unwrap();
    let all = loaded.predict(&images).unwrap();
    assert_eq!(all.len(), infer::INFERENCE_BATCH + 3);
    let tail = loaded
        .predict(&images[infer::INFERENCE_BATCH * IMAGE_NUMEL..])
        .unwrap();
    assert_eq!(&all[infer::INFERENCE_BATCH..], tail.as_slice());
    assert_eq!(loaded.config(), &config);
}

#[test]
fn shared_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ShelfNet>();
    assert_send_sync::<LoadedModel>();
    assert_send_sync::<ComputeDevice>();
    assert_send_sync::<ModelError>();
}

#[test]
fn backend_choice_parses_and_displays() {
    for (text, choice) in [
        ("auto", BackendChoice::Auto),
        ("wgpu", BackendChoice::Wgpu),
        ("cpu", BackendChoice::Cpu),
        (" CPU ", BackendChoice::Cpu),
    ] {
        assert_eq!(text.parse::<BackendChoice>().unwrap(), choice);
    }
    for choice in [BackendChoice::Auto, BackendChoice::Wgpu, BackendChoice::Cpu] {
        assert_eq!(choice.to_string().parse::<BackendChoice>().unwrap(), choice);
    }
    let err = "cuda".parse::<BackendChoice>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown backend \"cuda\", expected one of auto, wgpu, cpu"
    );
}

#[test]
fn device_selection_never_panics() {
    let cpu = select_device(BackendChoice::Cpu).unwrap();
    assert_eq!(cpu.description(), "cpu (flex)");
    assert!(!cpu.is_gpu());
    let auto = select_device(BackendChoice::Auto).unwrap();
    if auto.is_gpu() {
        assert!(auto.description().starts_with("wgpu: "));
    } else {
        assert_eq!(auto.description(), "cpu (flex)");
        assert!(auto.fallback_reason().is_some());
    }
    match select_device(BackendChoice::Wgpu) {
        Ok(dev) => assert!(dev.description().starts_with("wgpu: ")),
        Err(err) => assert!(matches!(err, ModelError::DeviceUnavailable(_))),
    }
    // Cached: a second probe answers the same way.
    assert_eq!(
        select_device(BackendChoice::Auto).unwrap().is_gpu(),
        auto.is_gpu()
    );
}

#[test]
fn config_roundtrips_through_json_and_validates() {
    let config = standard();
    assert_eq!(config.conv_channels, [8, 16, 32]);
    assert_eq!(config.hidden, 32);
    assert_eq!(ShelfNetConfig::default(), config);
    assert_eq!(
        serde_json::to_string(&config).unwrap(),
        r#"{"conv_channels":[8,16,32],"hidden":32}"#
    );
    let json = serde_json::to_value(&config).unwrap();
    let map: HashMap<String, serde_json::Value> = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(map.len(), 2);
    let back: ShelfNetConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, config);
    // Unknown fields are refused; the McMahan CNN spells out every non-default field.
    assert!(
        serde_json::from_str::<ShelfNetConfig>(r#"{"conv_channels":[8,16,32],"hidden":32,"x":1}"#)
            .is_err()
    );
    let cnn = ShelfNetConfig::mcmahan_cnn();
    let text = serde_json::to_string(&cnn).unwrap();
    assert_eq!(
        text,
        r#"{"conv_channels":[32,64],"hidden":512,"kernel_size":5,"input_channels":1,"image_size":28,"num_classes":10}"#
    );
    assert_eq!(serde_json::from_str::<ShelfNetConfig>(&text).unwrap(), cnn);
    assert!(cnn.validate().is_ok());
    assert!(!cnn.is_shelf_classifier() && config.is_shelf_classifier());
    // The paper's parameter count.
    assert_eq!(crate::num_parameters(&cnn), 1_663_370);
    for bad in [
        ShelfNetConfig::new().with_conv_channels([8]),
        ShelfNetConfig::new().with_conv_channels([8, 8, 8, 8]),
        ShelfNetConfig::new().with_kernel_size(4),
        ShelfNetConfig::new().with_kernel_size(9),
        ShelfNetConfig::new().with_input(0, 64),
        ShelfNetConfig::new().with_input(3, 60),
        ShelfNetConfig::new().with_classes(1),
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    assert!(
        ShelfNetConfig::new()
            .with_conv_channels([8, 0, 32])
            .validate()
            .is_err()
    );
    assert!(
        ShelfNetConfig::new()
            .with_hidden(100_000)
            .validate()
            .is_err()
    );
    assert!(config.validate().is_ok());
}

#[test]
fn l2_norm_matches_a_plain_sum_for_every_remainder_length() {
    for n in [0usize, 1, 7, 8, 9, 17, 1_000] {
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let plain = values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        assert!(
            (crate::params::l2_norm(&values) - plain).abs() <= 1e-12 * plain.max(1.0),
            "n={n}"
        );
    }
    assert!(crate::params::l2_norm(&[1.0, f32::NAN]).is_nan());
}
