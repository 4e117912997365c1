//! Weights loading: our canonical safetensors files (`from_safetensors`, what every node and
//! the coordinator read) and PyTorch-layout files (`from_torch_safetensors`, `models import`).
//! Arbitrary bytes must give a clear error or parameters that re-encode to a file that loads
//! back to the same values; never a panic, never an allocation the header alone asks for.
#![no_main]

use backroom_models::params::{TensorSpec, from_safetensors, to_safetensors};
use backroom_models::{ShelfNetConfig, from_torch_safetensors};
use libfuzzer_sys::fuzz_target;

fn layout() -> Vec<TensorSpec> {
    vec![
        TensorSpec {
            name: "conv1.weight".into(),
            shape: vec![2, 3, 1, 1],
        },
        TensorSpec {
            name: "conv1.bias".into(),
            shape: vec![2],
        },
        TensorSpec {
            name: "fc1.weight".into(),
            shape: vec![2, 4],
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    let layout = layout();
    if let Ok(params) = from_safetensors(&layout, data) {
        let numel: usize = layout.iter().map(TensorSpec::numel).sum();
        assert_eq!(params.len(), numel);
        let again = to_safetensors(&layout, &params).expect("re-encoding loaded parameters");
        let reloaded = from_safetensors(&layout, &again).expect("loading re-encoded parameters");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&reloaded), bits(&params));
    }
    // Free-form: the config is read from the file's own header.
    if let Ok((config, params)) = from_torch_safetensors(data, None) {
        assert!(config.validate().is_ok(), "accepted an invalid config");
        assert_eq!(params.len(), backroom_models::num_parameters(&config));
    }
    let _ = from_torch_safetensors(data, Some(&ShelfNetConfig::default()));
});
