use std::collections::HashSet;

use super::*;

const WORLD: u64 = 0x00BA_C000_2026;

fn image_bits(crops: &ShelfCrops, i: usize) -> Vec<u32> {
    crops
        .image(i)
        .expect("image exists")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len() as f32
}

fn mean_rgb(crops: &ShelfCrops) -> [f32; 3] {
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let mut sum = [0.0f64; 3];
    for i in 0..crops.len() {
        let img = crops.image(i).expect("image exists");
        for (c, s) in sum.iter_mut().enumerate() {
            *s += img[c * plane..(c + 1) * plane]
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>();
        }
    }
    let n = (crops.len() * plane) as f64;
    [
        (sum[0] / n) as f32,
        (sum[1] / n) as f32,
        (sum[2] / n) as f32,
    ]
}

/// Accuracy of the best single threshold (either direction) on a scalar feature.
fn best_threshold_accuracy(features: &[f32], labels: &[u8]) -> f32 {
    let mut pairs: Vec<(f32, u8)> = features
        .iter()
        .copied()
        .zip(labels.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = pairs.len();
    let total_empty = pairs.iter().filter(|p| p.1 == 1).count();
    // Predict "empty" above the threshold, or below it; sweep all cut points.
    let mut empty_below = 0usize;
    let mut best = 0usize;
    for k in 0..=n {
        if k > 0 && pairs[k - 1].1 == 1 {
            empty_below += 1;
        }
        let stocked_below = k - empty_below;
        let empty_above = total_empty - empty_below;
        let above = n - k;
        let stocked_above = above - empty_above;
        // Rule A: below => stocked, above => empty.
        let a = stocked_below + empty_above;
        // Rule B: below => empty, above => stocked.
        let b = empty_below + stocked_above;
        // Only cut between distinct values.
        let valid = k == 0 || k == n || pairs[k - 1].0 < pairs[k].0;
        if valid {
            best = best.max(a).max(b);
        }
    }
    best as f32 / n as f32
}

#[test]
fn constants_match() {
    assert_eq!(PIXELS_PER_IMAGE, 3 * 64 * 64);
    assert_eq!(SlotState::Stocked as u8, 0);
    assert_eq!(SlotState::Empty as u8, 1);
    assert_eq!(SlotState::from_label(1), Some(SlotState::Empty));
    assert_eq!(SlotState::from_label(2), None);
    assert!(SlotState::try_from(7u8).is_err());
}

#[test]
fn store_split_is_deterministic_and_prefix_stable() {
    let a = generate_store_split(WORLD, 3, 40);
    let b = generate_store_split(WORLD, 3, 40);
    assert_eq!(a.labels, b.labels);
    assert!(
        a.images
            .iter()
            .zip(&b.images)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );

    let short = generate_store_split(WORLD, 3, 10);
    assert_eq!(short.labels[..], a.labels[..10]);
    assert_eq!(short.images[..], a.images[..10 * PIXELS_PER_IMAGE]);

    let other_store = generate_store_split(WORLD, 4, 40);
    assert_ne!(a.images, other_store.images);
    let other_world = generate_store_split(WORLD + 1, 3, 40);
    assert_ne!(a.images, other_world.images);

    assert_eq!(store_profile(WORLD, 5), store_profile(WORLD, 5));
    assert_ne!(store_profile(WORLD, 5), store_profile(WORLD, 6));
}

#[test]
fn test_split_is_deterministic() {
    let a = generate_test_split(WORLD, 30);
    let b = generate_test_split(WORLD, 30);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.images, b.images);
    assert_ne!(a.images, generate_test_split(WORLD + 1, 30).images);
}

#[test]
fn values_are_finite_and_in_range() {
    for crops in [
        generate_store_split(WORLD, 0, 200),
        generate_store_split(WORLD, 7, 200),
        generate_test_split(WORLD, 200),
    ] {
        assert_eq!(crops.images.len(), crops.len() * PIXELS_PER_IMAGE);
        assert!(
            crops
                .images
                .iter()
                .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
        );
        crops.validate().expect("valid");
        // Not degenerate: images use a good part of the range.
        let lo = crops.images.iter().copied().fold(1.0f32, f32::min);
        let hi = crops.images.iter().copied().fold(0.0f32, f32::max);
        assert!(lo < 0.1 && hi > 0.9, "range {lo}..{hi}");
    }
}

#[test]
fn test_split_is_balanced() {
    let test = generate_test_split(WORLD, 1001);
    let [stocked, empty] = test.class_counts();
    assert_eq!(stocked + empty, 1001);
    assert!(stocked.abs_diff(empty) <= 1, "{stocked} vs {empty}");
    // Not simply alternating.
    let alternating = test.labels.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        alternating < 900,
        "labels alternate too regularly: {alternating}"
    );
}

#[test]
fn stores_are_non_iid() {
    let n = 600;
    let splits: Vec<ShelfCrops> = (0..8).map(|s| generate_store_split(WORLD, s, n)).collect();
    let rates: Vec<f32> = splits
        .iter()
        .map(|c| c.class_counts()[1] as f32 / n as f32)
        .collect();
    let (rmin, rmax) = rates
        .iter()
        .fold((1.0f32, 0.0f32), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    assert!(rmax - rmin > 0.12, "empty rates too similar: {rates:?}");
    for (s, (&rate, split)) in rates.iter().zip(&splits).enumerate() {
        let profile = store_profile(WORLD, s as u32);
        assert!(
            (rate - profile.empty_rate).abs() < 0.08,
            "store {s}: rate {rate} vs profile {}",
            profile.empty_rate
        );
        assert!(split.class_counts()[0] > 0 && split.class_counts()[1] > 0);
    }

    let colours: Vec<[f32; 3]> = splits.iter().map(mean_rgb).collect();
    let mut max_dist = 0.0f32;
    for a in &colours {
        for b in &colours {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt();
            max_dist = max_dist.max(d);
        }
    }
    assert!(max_dist > 0.1, "mean colours too similar: {colours:?}");

    // SKU mixes differ: dominant SKUs are not all the same.
    let dominant: HashSet<usize> = (0..8)
        .map(|s| store_profile(WORLD, s).dominant_sku())
        .collect();
    assert!(dominant.len() >= 3, "dominant skus {dominant:?}");
}

#[test]
fn profiles_are_sane() {
    for s in 0..64 {
        let p = store_profile(WORLD, s);
        assert_eq!(p.store_index, s);
        assert!((p.sku_mix.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(p.empty_rate > 0.0 && p.empty_rate < 1.0);
        let stationary = p.sell_out_per_hour / (p.sell_out_per_hour + p.restock_per_hour);
        assert!((stationary - p.empty_rate).abs() < 1e-4);
    }
    let test_profiles = test_split_profiles(WORLD);
    assert_eq!(
        test_profiles.len(),
        (SEEN_TEST_STORES + UNSEEN_TEST_STORES) as usize
    );
}

#[test]
fn test_split_disjoint_from_training() {
    let mut seen: HashSet<Vec<u32>> = HashSet::new();
    for s in 0..8 {
        let train = generate_store_split(WORLD, s, 150);
        for i in 0..train.len() {
            seen.insert(image_bits(&train, i));
        }
    }
    let test = generate_test_split(WORLD, 300);
    for i in 0..test.len() {
        assert!(
            !seen.contains(&image_bits(&test, i)),
            "test image {i} is a training image"
        );
    }
    // And no duplicates inside the test split.
    let unique: HashSet<Vec<u32>> = (0..test.len()).map(|i| image_bits(&test, i)).collect();
    assert_eq!(unique.len(), test.len());
}

#[test]
fn mean_brightness_is_not_a_good_classifier() {
    let test = generate_test_split(WORLD, 2000);
    let brightness: Vec<f32> = (0..test.len())
        .map(|i| mean(test.image(i).expect("image exists")))
        .collect();
    let acc = best_threshold_accuracy(&brightness, &test.labels);
    assert!(acc < 0.8, "mean brightness separates classes: {acc}");

    // Per-channel means alone are not enough either.
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    for c in 0..CHANNELS {
        let feature: Vec<f32> = (0..test.len())
            .map(|i| mean(&test.image(i).expect("image exists")[c * plane..(c + 1) * plane]))
            .collect();
        let acc = best_threshold_accuracy(&feature, &test.labels);
        assert!(acc < 0.8, "channel {c} mean separates classes: {acc}");
    }
}

#[test]
fn threshold_helper_works() {
    assert_eq!(
        best_threshold_accuracy(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]),
        1.0
    );
    assert_eq!(
        best_threshold_accuracy(&[0.1, 0.2, 0.8, 0.9], &[1, 1, 0, 0]),
        1.0
    );
    assert_eq!(best_threshold_accuracy(&[0.5, 0.5], &[0, 1]), 0.5);
}

#[test]
fn replay_advances_and_changes() {
    let mut replay = CameraReplay::new(WORLD, 2, 7, 8, 1_700_000_000, 300);
    assert_eq!(replay.slot_count(), 8);
    let mut last_time = None;
    let mut changes = 0;
    let mut prev_labels: Option<Vec<u8>> = None;
    let mut seen_states = [false; 2];
    for f in 0..200 {
        let frame = replay.next_frame();
        assert_eq!(frame.camera_id, 7);
        assert_eq!(frame.captured_unix, 1_700_000_000 + 300 * f);
        if let Some(t) = last_time {
            assert!(frame.captured_unix > t);
        }
        last_time = Some(frame.captured_unix);
        assert_eq!(frame.crops.len(), 8);
        frame.crops.validate().expect("valid frame");
        for &l in &frame.crops.labels {
            seen_states[usize::from(l)] = true;
        }
        if let Some(prev) = &prev_labels {
            for (a, b) in prev.iter().zip(&frame.crops.labels) {
                if a != b {
                    changes += 1;
                }
            }
        }
        prev_labels = Some(frame.crops.labels.clone());
    }
    assert_eq!(replay.frames_emitted(), 200);
    assert!(changes >= 4, "only {changes} state changes");
    assert!(seen_states[0] && seen_states[1]);
}

#[test]
fn replay_is_deterministic_and_cameras_differ() {
    let mut a = CameraReplay::new(WORLD, 1, 0, 4, 0, 60);
    let mut b = CameraReplay::new(WORLD, 1, 0, 4, 0, 60);
    let mut c = CameraReplay::new(WORLD, 1, 1, 4, 0, 60);
    let mut differs = false;
    for _ in 0..5 {
        let (fa, fb, fc) = (a.next_frame(), b.next_frame(), c.next_frame());
        assert_eq!(fa.crops.images, fb.crops.images);
        assert_eq!(fa.crops.labels, fb.crops.labels);
        differs |= fa.crops.images != fc.crops.images;
    }
    assert!(differs);
}

#[test]
fn replay_frames_of_same_slot_differ_by_capture_only() {
    // Consecutive frames of an unchanged slot are not byte-identical (noise, jitter),
    // but much closer to each other than to another slot.
    let mut replay = CameraReplay::new(WORLD, 0, 0, 3, 0, 0);
    let f0 = replay.next_frame();
    let f1 = replay.next_frame();
    assert_eq!(f0.captured_unix, f1.captured_unix);
    assert_eq!(f0.crops.labels, f1.crops.labels);
    let dist = |x: &[f32], y: &[f32]| -> f32 {
        x.iter().zip(y).map(|(a, b)| (a - b).abs()).sum::<f32>() / x.len() as f32
    };
    let a0 = f0.crops.image(0).expect("slot 0");
    let a1 = f1.crops.image(0).expect("slot 0");
    assert_ne!(a0, a1);
    assert!(dist(a0, a1) < 0.2);
}

#[test]
fn empty_replay_is_fine() {
    let mut replay = CameraReplay::new(WORLD, 0, 0, 0, 10, -5);
    let frame = replay.next_frame();
    assert!(frame.crops.is_empty());
    assert_eq!(replay.next_frame().captured_unix, 10);
}

#[test]
fn push_validates() {
    let mut crops = ShelfCrops::default();
    assert!(crops.is_empty());
    assert!(matches!(
        crops.push(&[0.5; 10], SlotState::Stocked),
        Err(DatasetError::WrongImageSize { got: 10, .. })
    ));
    assert!(
        crops
            .push(&vec![0.5; PIXELS_PER_IMAGE + 1], SlotState::Empty)
            .is_err()
    );
    let mut bad = vec![0.5; PIXELS_PER_IMAGE];
    bad[17] = f32::NAN;
    assert!(matches!(
        crops.push(&bad, SlotState::Empty),
        Err(DatasetError::PixelOutOfRange { offset: 17, .. })
    ));
    bad[17] = 1.5;
    assert!(crops.push(&bad, SlotState::Empty).is_err());
    assert!(crops.is_empty());
    assert!(crops.images.is_empty());

    crops
        .push(&vec![0.25; PIXELS_PER_IMAGE], SlotState::Empty)
        .expect("push");
    crops
        .push(&vec![0.75; PIXELS_PER_IMAGE], SlotState::Stocked)
        .expect("push");
    assert_eq!(crops.len(), 2);
    assert_eq!(crops.class_counts(), [1, 1]);
    assert_eq!(crops.image(1).map(|i| i[0]), Some(0.75));
    assert_eq!(crops.label(0), Some(SlotState::Empty));
    assert!(crops.image(2).is_none());
    crops.validate().expect("valid");

    let mut more = crops.clone();
    more.extend(&crops);
    assert_eq!(more.len(), 4);
    assert_eq!(more.class_counts(), [2, 2]);
    more.validate().expect("valid");

    more.labels.push(0);
    assert!(matches!(
        more.validate(),
        Err(DatasetError::LengthMismatch { .. })
    ));
    more.labels.pop();
    more.labels[0] = 9;
    assert!(matches!(
        more.validate(),
        Err(DatasetError::InvalidLabel { index: 0, label: 9 })
    ));
    more.labels[0] = 0;
    more.images[5] = -0.1;
    assert!(more.validate().is_err());
}

#[test]
fn error_messages_are_lowercase() {
    let errors = [
        DatasetError::WrongImageSize {
            expected: 1,
            got: 2,
        },
        DatasetError::PixelOutOfRange {
            offset: 0,
            value: 2.0,
        },
        DatasetError::LengthMismatch {
            values: 1,
            labels: 1,
            expected: 3,
        },
        DatasetError::InvalidLabel { index: 0, label: 3 },
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(
            msg.chars().next().is_some_and(|c| !c.is_uppercase()),
            "{msg}"
        );
    }
}
