//! Clipping, deltas, seeds and the update stream.

use std::sync::Arc;

use backroom_proto::MAX_CHUNK_BYTES;
use backroom_proto::v1::{UpdateHeader, update_chunk};
use sha2::{Digest, Sha256};

use crate::trainer::{
    ClipError, clip_l2, encode_delta, l2_norm, training_seed, update_chunks, weight_delta,
};

// ---- clipping ----

#[test]
fn clipping_brings_the_norm_to_at_most_c() {
    for (n, c) in [(10usize, 1.0f32), (1_000, 0.1), (100_000, 2.5), (3, 1e-3)] {
        let mut delta: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect();
        let before = l2_norm(&delta);
        assert!(before > f64::from(c));
        let outcome = clip_l2(&mut delta, c).expect("clip");
        assert!(
            l2_norm(&delta) <= f64::from(c),
            "n={n} c={c} after={}",
            l2_norm(&delta)
        );
        assert!(outcome.norm_after <= f64::from(c));
        assert!((outcome.norm_after - f64::from(c)).abs() / f64::from(c) < 1e-4);
        assert!((outcome.norm_before - before).abs() < 1e-9);
    }
}

#[test]
fn clipping_below_c_and_zero_vectors_are_no_ops() {
    let mut small = vec![0.1f32, -0.2, 0.05];
    let copy = small.clone();
    let outcome = clip_l2(&mut small, 1.0).expect("clip");
    assert_eq!(small, copy);
    assert_eq!(outcome.scale, 1.0);
    let mut zero = vec![0.0f32; 16];
    let outcome = clip_l2(&mut zero, 1.0).expect("clip");
    assert_eq!(zero, vec![0.0f32; 16]);
    assert_eq!(outcome.norm_after, 0.0);
    let mut empty: Vec<f32> = Vec::new();
    assert!(clip_l2(&mut empty, 1.0).is_ok());
}

#[test]
fn clipping_refuses_non_finite_input_and_bad_clip_norms() {
    let mut nan = vec![1.0f32, f32::NAN, 2.0];
    assert_eq!(
        clip_l2(&mut nan, 1.0),
        Err(ClipError::NonFinite { index: 1 })
    );
    let mut inf = vec![f32::INFINITY];
    assert_eq!(
        clip_l2(&mut inf, 1.0),
        Err(ClipError::NonFinite { index: 0 })
    );
    let mut fine = vec![1.0f32];
    for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            clip_l2(&mut fine, bad),
            Err(ClipError::InvalidClipNorm(_))
        ));
    }
}

#[test]
fn delta_is_fine_tuned_minus_base() {
    let delta = weight_delta(&[1.5, 2.0, -1.0], &[1.0, 2.0, 1.0]).expect("same shape");
    assert_eq!(delta, vec![0.5, 0.0, -2.0]);
    assert!(weight_delta(&[1.0], &[1.0, 2.0]).is_err());
}

#[test]
fn training_seed_depends_on_round_and_store() {
    let a = training_seed("round-1", "store-a", 0);
    assert_eq!(a, training_seed("round-1", "store-a", 0));
    assert_ne!(a, training_seed("round-2", "store-a", 0));
    assert_ne!(a, training_seed("round-1", "store-b", 0));
    assert_ne!(a, training_seed("round-1", "store-a", 1));
}

#[test]
fn update_stream_is_header_bounded_chunks_and_trailer() {
    let delta: Vec<f32> = (0..(MAX_CHUNK_BYTES / 4 * 2 + 10))
        .map(|i| i as f32)
        .collect();
    let (bytes, sha) = encode_delta(&delta);
    assert_eq!(sha, Sha256::digest(&bytes).to_vec());
    let header = UpdateHeader {
        round_id: "r".into(),
        base_version: 1,
        num_parameters: delta.len() as u64,
        num_examples: 5,
        within_clip_norm: true,
    };
    let chunks: Vec<_> = update_chunks(header, Arc::new(bytes.clone()), sha.clone()).collect();
    assert_eq!(chunks.len(), 1 + 3 + 1);
    assert!(matches!(
        chunks[0].kind,
        Some(update_chunk::Kind::Header(_))
    ));
    let mut joined = Vec::new();
    for chunk in &chunks[1..4] {
        let Some(update_chunk::Kind::Data(data)) = &chunk.kind else {
            panic!("data expected")
        };
        assert!(data.len() <= MAX_CHUNK_BYTES);
        joined.extend_from_slice(data);
    }
    assert_eq!(joined, bytes);
    assert_eq!(
        f32::from_le_bytes([joined[4], joined[5], joined[6], joined[7]]),
        1.0
    );
    let Some(update_chunk::Kind::Trailer(trailer)) = &chunks[4].kind else {
        panic!("trailer")
    };
    assert_eq!(trailer.sha256, sha);
}
