//! The compiled stump evaluator computes exactly what the general one does.

use image::{GrayImage, Luma};
use rand::{Rng, SeedableRng};

use super::{Cascade, Integral};

/// Textured test images: smooth gradients with random blobs and edges, so windows reach
/// different depths of the cascade.
fn textured(seed: u64, width: u32, height: u32) -> GrayImage {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let blobs: Vec<(f32, f32, f32, f32)> = (0..40)
        .map(|_| {
            (
                rng.random_range(0.0..width as f32),
                rng.random_range(0.0..height as f32),
                rng.random_range(3.0..30.0),
                rng.random_range(-120.0..120.0),
            )
        })
        .collect();
    GrayImage::from_fn(width, height, |x, y| {
        let mut v = 60.0 + 100.0 * x as f32 / width as f32;
        for &(bx, by, r, amp) in &blobs {
            let d2 = (x as f32 - bx).powi(2) + (y as f32 - by).powi(2);
            v += amp * (-d2 / (r * r)).exp();
        }
        Luma([v.clamp(0.0, 255.0) as u8])
    })
}

#[test]
fn compiled_stumps_sum_every_stage_of_every_window_like_the_general_evaluator() {
    let cascade = Cascade::parse(super::super::HAAR_PROFILE).unwrap_or_else(|e| panic!("{e}"));
    let (width, height) = cascade.window();
    let mut compared = 0usize;
    let mut passed = 0usize;
    for seed in 0..3 {
        for cascade in [cascade.clone(), cascade.mirrored()] {
            let image = textured(seed, 96, 80);
            let integral = Integral::new(&image);
            let corners = cascade.corners(integral.stride);
            let compiled = cascade
                .compile(integral.stride)
                .unwrap_or_else(|| panic!("the profile cascade is all stumps"));
            for y in 0..=image.height() - height {
                for x in 0..=image.width() - width {
                    let norm = integral.norm(x, y, width, height);
                    let origin = y as usize * integral.stride + x as usize;
                    // Every stage's total, bit for bit, with no early exit.
                    let (mut general, mut flat) = (Vec::new(), Vec::new());
                    cascade.evaluate(&corners, &integral.sums, origin, norm, |t, _| {
                        general.push(t.to_bits());
                        true
                    });
                    compiled.evaluate(&integral.sums, origin, norm, |t, _| {
                        flat.push(t.to_bits());
                        true
                    });
                    assert_eq!(general, flat, "window at {x},{y} (seed {seed})");
                    assert_eq!(general.len(), cascade.stages.len());
                    let decision = cascade.passes(&corners, &integral.sums, origin, norm);
                    assert_eq!(decision, compiled.passes(&integral.sums, origin, norm));
                    compared += 1;
                    passed += usize::from(decision);
                }
            }
        }
    }
    assert!(compared > 20_000);
    eprintln!("{compared} windows compared through all stages, {passed} passed every stage");
}

#[test]
fn a_row_evaluated_at_once_passes_exactly_the_windows_that_pass_one_by_one() {
    let cascade = Cascade::parse(super::super::HAAR_PROFILE).unwrap_or_else(|e| panic!("{e}"));
    let (width, height) = cascade.window();
    let mut row = super::RowScratch::default();
    let (mut windows, mut passed) = (0usize, 0usize);
    for seed in 0..3 {
        let image = textured(seed + 10, 120, 64);
        let integral = Integral::new(&image);
        for cascade in [cascade.clone(), cascade.mirrored()] {
            // The real thresholds, then lowered ones so that many windows survive the dense
            // stages and reach the one-by-one tail, and some pass every stage.
            for lower in [0.0f32, 0.5, 1.0, 3.0] {
                let mut compiled = cascade
                    .compile(integral.stride)
                    .unwrap_or_else(|| panic!("the profile cascade is all stumps"));
                for stage in &mut compiled.stages {
                    stage.threshold -= lower;
                }
                for y in 0..=image.height() - height {
                    let norms: Vec<f32> = (0..=image.width() - width)
                        .map(|x| integral.norm(x, y, width, height))
                        .collect();
                    let origin = y as usize * integral.stride;
                    let mut at_once = Vec::new();
                    compiled.passes_row(&integral.sums, origin, &norms, &mut row, &mut at_once);
                    let one_by_one: Vec<usize> = (0..norms.len())
                        .filter(|&x| compiled.passes(&integral.sums, origin + x, norms[x]))
                        .collect();
                    assert_eq!(at_once, one_by_one, "row {y}, seed {seed}, lowered {lower}");
                    windows += norms.len();
                    passed += one_by_one.len();
                }
            }
        }
    }
    assert!(windows > 20_000);
    assert!(
        passed > 100,
        "only {passed} windows passed: the comparison is too easy"
    );
    eprintln!("{windows} windows compared, {passed} passed");
}
