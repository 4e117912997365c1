//! MTCNN pieces on their own: suppression, box geometry, crops, plan padding, refusals.
#![allow(clippy::unwrap_used)]

use super::*;

fn boxed(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> Candidate {
    Candidate {
        x1,
        y1,
        x2,
        y2,
        score,
    }
}

#[test]
fn suppression_keeps_the_best_of_overlapping_boxes() {
    let a = boxed(0.0, 0.0, 10.0, 10.0, 0.9);
    let b = boxed(1.0, 1.0, 11.0, 11.0, 0.95); // IoU with a: 81 / 119 = 0.68
    let c = boxed(50.0, 50.0, 60.0, 60.0, 0.5);
    let inner = boxed(2.0, 2.0, 6.0, 6.0, 0.99); // inside a: IoU 0.16, over the smaller 1.0
    let kept = suppress(vec![a, b, c], 0.5, Overlap::Union);
    assert_eq!(kept, vec![b, c]);
    assert_eq!(suppress(vec![a, b, c], 0.7, Overlap::Union), vec![b, a, c]);
    assert_eq!(
        suppress(vec![a, inner], 0.5, Overlap::Union),
        vec![inner, a]
    );
    assert_eq!(suppress(vec![a, inner], 0.5, Overlap::Min), vec![inner]);
}

#[test]
fn boxes_are_refined_by_their_side_and_squared_about_their_centre() {
    let c = boxed(10.0, 20.0, 30.0, 60.0, 1.0); // 20 wide, 40 high
    let r = c.refined([0.1, -0.05, 0.5, 0.0]);
    assert_eq!((r.x1, r.y1, r.x2, r.y2), (12.0, 18.0, 40.0, 60.0));
    let s = c.squared();
    assert_eq!((s.x1, s.y1, s.x2, s.y2), (0.0, 20.0, 40.0, 60.0));
}

#[test]
fn crops_past_the_edge_are_black_there() {
    let gray = GrayImage::from_pixel(20, 20, Luma([200]));
    // Half of the box hangs over the left edge.
    let crop = crop_square(&gray, &boxed(-10.0, 0.0, 10.0, 20.0, 1.0), 24);
    assert_eq!(crop.dimensions(), (24, 24));
    assert!(
        crop.get_pixel(2, 12).0[0] < 10,
        "{:?}",
        crop.get_pixel(2, 12)
    );
    assert!(
        crop.get_pixel(21, 12).0[0] > 190,
        "{:?}",
        crop.get_pixel(21, 12)
    );
    // Wholly outside: all black, no panic.
    let away = crop_square(&gray, &boxed(100.0, 100.0, 140.0, 140.0, 1.0), 24);
    assert!(away.pixels().all(|p| p.0[0] == 0));
}

/// P-Net's outputs at every position that is kept (its 12×12 window inside the level) are
/// the same whether the input is padded for plan sharing or not.
#[test]
fn padding_changes_no_kept_pnet_output() {
    let m = Mtcnn::new(MtcnnSettings::default()).unwrap();
    let (w, h) = (37usize, 29usize);
    let level = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        Luma([((x * 37 + y * 11 + x * y) % 251) as u8])
    });
    let run = |pw: usize, ph: usize| {
        let mut input = vec![0.0f32; pw * ph * 3];
        write_transposed(&level, &mut input, ph);
        let tensor = Tensor::from_shape(&[1, pw, ph, 3], &input).unwrap();
        let plan = plan("pnet", &m.pnet, [1, pw, ph, 3]).unwrap();
        let out = plan.run(tvec!(tensor.into())).unwrap();
        pnet_map(&out, 2).unwrap().to_owned()
    };
    let exact = run(w, h);
    let padded = run(48, 32);
    let (nx, ny) = ((w - 12) / 2 + 1, (h - 12) / 2 + 1);
    let mut worst = 0.0f32;
    for x in 0..nx {
        for y in 0..ny {
            worst = worst.max((exact[[0, x, y, 1]] - padded[[0, x, y, 1]]).abs());
        }
    }
    assert!(worst < 1e-5, "largest difference {worst}");
}

#[test]
fn a_pyramid_that_would_not_shrink_is_refused() {
    for step in [1.0, 1.5, 0.0, f32::NAN] {
        let settings = MtcnnSettings {
            pyramid_step: step,
            ..MtcnnSettings::default()
        };
        let err = Mtcnn::new(settings).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("pyramid step")),
            "{step}: {err:?}"
        );
    }
}

#[test]
fn images_smaller_than_the_smallest_face_and_blank_ones_have_no_faces() {
    let m = Mtcnn::new(MtcnnSettings::default()).unwrap();
    assert!(m.detect(&GrayImage::new(0, 0)).unwrap().is_empty());
    assert!(m.detect(&GrayImage::new(39, 300)).unwrap().is_empty());
    let flat = GrayImage::from_pixel(320, 240, Luma([128]));
    assert!(m.detect(&flat).unwrap().is_empty());
}
