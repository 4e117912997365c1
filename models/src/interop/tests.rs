#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::*;

/// Two 1×1 conv blocks of one channel on 1×8×8 images, so fc1 sees 1×2×2 = 4 features: small
/// enough to check every transposed value by hand.
fn tiny() -> ShelfNetConfig {
    ShelfNetConfig::new()
        .with_conv_channels([1, 1])
        .with_hidden(3)
        .with_kernel_size(1)
        .with_input(1, 8)
}

/// Distinct, finite values: parameter i is i / 8.
fn counting(config: &ShelfNetConfig) -> Vec<f32> {
    (0..num_parameters(config))
        .map(|i| i as f32 / 8.0)
        .collect()
}

/// One tensor of a safetensors file, owned: `(name, dtype, shape, bytes)`.
type OwnedTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn tensors_of(bytes: &[u8]) -> Vec<OwnedTensor> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect()
}

/// Re-encodes tensors as `safetensors.torch.save_file` would (the reference crate's writer),
/// with the given metadata.
fn encode(tensors: &[OwnedTensor], metadata: Option<HashMap<String, String>>) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.as_str(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, metadata).unwrap()
}

fn metadata_for(config: &ShelfNetConfig) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "backroom_architecture".to_string(),
            ARCHITECTURE_ID.to_string(),
        ),
        (
            "backroom_config".to_string(),
            serde_json::to_string(config).unwrap(),
        ),
    ])
}

/// The tiny model's torch file, re-encoded after `edit` changed its tensors.
fn edited(edit: impl FnOnce(&mut Vec<OwnedTensor>)) -> Vec<u8> {
    let config = tiny();
    let mut tensors = tensors_of(&to_torch_safetensors(&config, &counting(&config)).unwrap());
    edit(&mut tensors);
    encode(&tensors, Some(metadata_for(&config)))
}

fn refusal(bytes: &[u8], expected: Option<&ShelfNetConfig>) -> String {
    match from_torch_safetensors(bytes, expected) {
        Err(ModelError::Safetensors(msg)) => msg,
        other => panic!("expected a safetensors error, got {other:?}"),
    }
}

fn tensor_mut<'a>(tensors: &'a mut [OwnedTensor], name: &str) -> &'a mut OwnedTensor {
    tensors.iter_mut().find(|t| t.0 == name).unwrap()
}

#[test]
fn round_trip_is_exact_and_deterministic() {
    for config in [ShelfNetConfig::new(), ShelfNetConfig::mcmahan_cnn(), tiny()] {
        let params = init_parameters(&config, 3).unwrap();
        let bytes = to_torch_safetensors(&config, &params).unwrap();
        assert_eq!(bytes, to_torch_safetensors(&config, &params).unwrap());
        let (back_config, back) = from_torch_safetensors(&bytes, None).unwrap();
        assert_eq!(back_config, config);
        assert_eq!(back, params);
        // The expected configuration, when given and equal, changes nothing.
        let (_, again) = from_torch_safetensors(&bytes, Some(&config)).unwrap();
        assert_eq!(again, params);
    }
}

#[test]
fn linear_weights_are_transposed_and_the_rest_is_kept() {
    let config = tiny();
    assert_eq!(config.flat_features(), 4);
    let params = counting(&config);
    let bytes = to_torch_safetensors(&config, &params).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let view = file.tensor(name).unwrap();
        assert_eq!(view.dtype(), Dtype::F32);
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (view.shape().to_vec(), values)
    };

    // Canonical order: conv1.weight [1,1,1,1] = p0, conv1.bias = p1, conv2.weight = p2,
    // conv2.bias = p3, fc1.weight Burn [4, 3] = p4..p16, fc1.bias = p16..p19,
    // fc2.weight Burn [3, 2] = p19..p25, fc2.bias = p25..p27.
    let p = |i: usize| i as f32 / 8.0;
    assert_eq!(read("conv1.weight"), (vec![1, 1, 1, 1], vec![p(0)]));
    assert_eq!(read("conv1.bias"), (vec![1], vec![p(1)]));
    assert_eq!(read("conv2.weight"), (vec![1, 1, 1, 1], vec![p(2)]));
    assert_eq!(read("conv2.bias"), (vec![1], vec![p(3)]));
    // Burn fc1.weight[i][o] = p(4 + 3i + o); PyTorch fc1.weight[o][i] must equal it.
    let (shape, fc1) = read("fc1.weight");
    assert_eq!(shape, vec![3, 4]);
    for o in 0..3 {
        for i in 0..4 {
            assert_eq!(fc1[o * 4 + i], p(4 + 3 * i + o), "fc1.weight[{o}][{i}]");
        }
    }
    assert_eq!(read("fc1.bias"), (vec![3], vec![p(16), p(17), p(18)]));
    let (shape, fc2) = read("fc2.weight");
    assert_eq!(shape, vec![2, 3]);
    assert_eq!(fc2, vec![p(19), p(21), p(23), p(20), p(22), p(24)]);
    assert_eq!(read("fc2.bias"), (vec![2], vec![p(25), p(26)]));
    assert_eq!(num_parameters(&config), 27);

    let mut names = file.names();
    names.sort_unstable();
    let mut expected: Vec<String> = torch_layout(&config).into_iter().map(|s| s.name).collect();
    expected.sort_unstable();
    assert_eq!(names, expected);

    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(header.metadata().as_ref(), Some(&metadata_for(&config)));
}

#[test]
fn files_written_by_the_reference_writer_are_read() {
    // Same tensors, but in the reference writer's order (sorted by name) and header layout.
    let config = tiny();
    let params = counting(&config);
    let ours = to_torch_safetensors(&config, &params).unwrap();
    let theirs = encode(&tensors_of(&ours), Some(metadata_for(&config)));
    assert_eq!(from_torch_safetensors(&theirs, None).unwrap().1, params);
    // Without metadata, the expected configuration is needed.
    let bare = encode(&tensors_of(&ours), None);
    assert_eq!(
        from_torch_safetensors(&bare, Some(&config)).unwrap(),
        (config.clone(), params)
    );
    assert!(refusal(&bare, None).contains("no backroom_config"));
}

#[test]
fn burn_layout_files_are_refused() {
    let config = tiny();
    let burn = to_safetensors(&parameter_layout(&config), &counting(&config)).unwrap();
    let msg = refusal(&burn, Some(&config));
    assert!(msg.contains("fc1.weight") && msg.contains("shape"), "{msg}");
}

#[test]
fn missing_extra_and_misshapen_tensors_are_refused() {
    let msg = refusal(&edited(|t| t.retain(|t| t.0 != "fc2.bias")), None);
    assert!(msg.contains("missing") && msg.contains("fc2.bias"), "{msg}");

    let msg = refusal(
        &edited(|t| t.push(("fc3.bias".to_string(), Dtype::F32, vec![1], vec![0; 4]))),
        None,
    );
    assert!(
        msg.contains("unexpected") && msg.contains("fc3.bias"),
        "{msg}"
    );

    let msg = refusal(
        &edited(|t| {
            let conv = tensor_mut(t, "conv1.bias");
            conv.2 = vec![1, 1];
        }),
        None,
    );
    assert!(msg.contains("conv1.bias") && msg.contains("shape"), "{msg}");
}

#[test]
fn other_dtypes_are_refused_with_a_conversion_hint() {
    for (dtype, width) in [(Dtype::F64, 8), (Dtype::F16, 2), (Dtype::BF16, 2)] {
        let msg = refusal(
            &edited(|t| {
                let fc1 = tensor_mut(t, "fc1.weight");
                fc1.1 = dtype;
                fc1.3 = vec![0; 12 * width];
            }),
            None,
        );
        assert!(
            msg.contains("fc1.weight") && msg.contains(&format!("{dtype:?}")),
            "{msg}"
        );
        assert!(msg.contains(".float()"), "{msg}");
    }
    let msg = refusal(
        &edited(|t| tensor_mut(t, "conv1.bias").1 = Dtype::I32),
        None,
    );
    assert!(msg.contains("I32") && msg.contains("expected F32"), "{msg}");
}

#[test]
fn non_finite_values_are_refused() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let msg = refusal(
            &edited(|t| {
                let fc2 = tensor_mut(t, "fc2.weight");
                fc2.3[8..12].copy_from_slice(&bad.to_le_bytes());
            }),
            None,
        );
        assert!(
            msg.contains("fc2.weight") && msg.contains("value 2 is not finite"),
            "{msg}"
        );
    }
    // Exporting non-finite parameters is refused too.
    let config = tiny();
    let mut params = counting(&config);
    params[5] = f32::NAN;
    assert!(matches!(
        to_torch_safetensors(&config, &params),
        Err(ModelError::NonFiniteParameter { index: 5 })
    ));
    assert!(matches!(
        to_torch_safetensors(&config, &params[1..]),
        Err(ModelError::ParameterCount { .. })
    ));
}

#[test]
fn metadata_must_agree_with_the_expected_configuration() {
    let config = tiny();
    let bytes = to_torch_safetensors(&config, &counting(&config)).unwrap();
    let other = tiny().with_hidden(4);
    let msg = refusal(&bytes, Some(&other));
    assert!(msg.contains("differs"), "{msg}");

    let tensors = tensors_of(&bytes);
    let mut wrong_architecture = metadata_for(&config);
    wrong_architecture.insert("backroom_architecture".to_string(), "resnet-18".to_string());
    let msg = refusal(&encode(&tensors, Some(wrong_architecture)), None);
    assert!(msg.contains("resnet-18"), "{msg}");

    for bad_config in [
        "not json",
        r#"{"conv_channels":[1,1],"hidden":3,"colour":true}"#,
        r#"{"conv_channels":[1],"hidden":3}"#,
    ] {
        let mut metadata = metadata_for(&config);
        metadata.insert("backroom_config".to_string(), bad_config.to_string());
        let msg = refusal(&encode(&tensors, Some(metadata)), None);
        assert!(msg.contains("backroom_config"), "{bad_config}: {msg}");
    }

    // An invalid expected configuration is a configuration error.
    let bare = encode(&tensors, None);
    let invalid = tiny().with_kernel_size(2);
    assert!(matches!(
        from_torch_safetensors(&bare, Some(&invalid)),
        Err(ModelError::InvalidConfig(_))
    ));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let config = tiny();
    let good = to_torch_safetensors(&config, &counting(&config)).unwrap();
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0; 7],
        b"not a safetensors file at all".to_vec(),
        u64::MAX.to_le_bytes().to_vec(),
        good[..good.len() - 1].to_vec(),
        good[..good.len() / 2].to_vec(),
    ];
    let mut extended = good.clone();
    extended.push(0);
    inputs.push(extended);
    let mut bad_header = good.clone();
    bad_header[HEADER_OFFSET] = b'[';
    inputs.push(bad_header);
    for (i, bytes) in inputs.iter().enumerate() {
        assert!(
            matches!(
                from_torch_safetensors(bytes, Some(&config)),
                Err(ModelError::Safetensors(_))
            ),
            "input {i}"
        );
    }
}

/// First byte of the JSON header.
const HEADER_OFFSET: usize = 8;
