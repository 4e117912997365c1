//! Motion gating against a stand-in detector: it "finds" every fully visible white square (a
//! face cut by the crop's edge is not found, as with the real detectors), so the tests can
//! check what the gate scanned and remembered exactly, and quickly.

use image::{GrayImage, Luma};

use super::{GateSettings, MotionGate};
use crate::redact::Region;

const W: u32 = 640;
const H: u32 = 360;
const FACE: u8 = 255;

/// Bounding boxes of 4-connected groups of `FACE` pixels that do not touch the image's edge.
fn squares(img: &GrayImage) -> Vec<Region> {
    let (w, h) = img.dimensions();
    let mut seen = vec![false; (w * h) as usize];
    let mut found = Vec::new();
    for start in 0..(w * h) {
        let (sx, sy) = (start % w, start / w);
        if seen[start as usize] || img.get_pixel(sx, sy).0[0] != FACE {
            continue;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (sx, sy, sx, sy);
        let mut stack = vec![(sx, sy)];
        seen[start as usize] = true;
        while let Some((x, y)) = stack.pop() {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            let next = [
                (x.wrapping_sub(1), y),
                (x + 1, y),
                (x, y.wrapping_sub(1)),
                (x, y + 1),
            ];
            for (nx, ny) in next {
                if nx < w
                    && ny < h
                    && !seen[(ny * w + nx) as usize]
                    && img.get_pixel(nx, ny).0[0] == FACE
                {
                    seen[(ny * w + nx) as usize] = true;
                    stack.push((nx, ny));
                }
            }
        }
        if x0 > 0 && y0 > 0 && x1 + 1 < w && y1 + 1 < h {
            found.push(Region {
                x: x0,
                y: y0,
                w: x1 - x0 + 1,
                h: y1 - y0 + 1,
            });
        }
    }
    found
}

/// A textured background (values below `FACE`) with white squares at `faces`.
fn scene(faces: &[Region], shift: u32) -> GrayImage {
    GrayImage::from_fn(W, H, |x, y| {
        if faces
            .iter()
            .any(|f| (f.x..f.x + f.w).contains(&x) && (f.y..f.y + f.h).contains(&y))
        {
            Luma([FACE])
        } else {
            Luma([(((x + shift) * 7 + y * 13) % 200) as u8 + ((x + shift) / 40 % 3) as u8 * 10])
        }
    })
}

fn face(x: u32, y: u32, side: u32) -> Region {
    Region {
        x,
        y,
        w: side,
        h: side,
    }
}

fn covers(found: &[Region], f: &Region) -> bool {
    found.iter().any(|r| r.contains(f))
}

#[test]
fn an_unchanged_frame_is_not_rescanned_and_keeps_its_faces() {
    let mut gate = MotionGate::new(GateSettings {
        refresh_frames: 1_000_000,
        ..GateSettings::default()
    });
    let f = face(100, 100, 48);
    let frame = scene(&[f], 0);
    let (found, first) = gate.faces(&frame, squares);
    assert!(first.full_scan && covers(&found, &f), "{found:?}");
    let mut calls = 0;
    for _ in 0..5 {
        let (found, report) = gate.faces(&frame, |img| {
            calls += 1;
            squares(img)
        });
        assert!(!report.full_scan && report.crops == 0, "{report:?}");
        assert!(covers(&found, &f), "remembered face lost: {found:?}");
    }
    assert_eq!(calls, 0, "nothing changed, so nothing is scanned");
}

#[test]
fn a_moving_face_is_found_in_every_frame() {
    let mut gate = MotionGate::new(GateSettings::default());
    let mut partial = 0;
    for t in 0..60u32 {
        let f = face(20 + t * 9, 60 + t * 3, 56);
        let frame = scene(&[f, face(500, 250, 60)], 0);
        let (found, report) = gate.faces(&frame, squares);
        assert!(
            covers(&found, &f),
            "frame {t}: moving face missed: {found:?} {report:?}"
        );
        assert!(
            covers(&found, &face(500, 250, 60)),
            "frame {t}: still face lost: {found:?}"
        );
        if t > 0 && !report.full_scan {
            partial += 1;
            assert!(report.scanned < 0.5, "frame {t}: {report:?}");
        }
        // The gate's answer is the whole-frame answer.
        let mut whole = squares(&frame);
        let mut gated = found.clone();
        whole.sort_by_key(|r| (r.x, r.y));
        gated.sort_by_key(|r| (r.x, r.y));
        gated.dedup();
        assert_eq!(gated, whole, "frame {t}");
    }
    assert!(partial > 50, "only {partial} frames were gated");
}

#[test]
fn a_face_that_changes_in_part_is_rescanned_whole() {
    let mut gate = MotionGate::new(GateSettings {
        refresh_frames: 1_000_000,
        reach: 0,
        ..GateSettings::default()
    });
    // A 120-pixel face; then only its bottom-right corner changes (a hand in front of the
    // mouth), so the changed blocks hold a small part of it.
    let f = face(200, 100, 120);
    let (found, _) = gate.faces(&scene(&[f], 0), squares);
    assert!(covers(&found, &f));
    let mut frame = scene(&[f], 0);
    for y in 200..216 {
        for x in 300..316 {
            frame.put_pixel(x, y, Luma([10]));
        }
    }
    let (found, report) = gate.faces(&frame, squares);
    assert_eq!(report.crops, 1, "{report:?}");
    assert!(
        !found.is_empty() && found.iter().all(|r| r.x <= 200 && r.y <= 100),
        "the crop must take the whole remembered face: {found:?}"
    );
}

#[test]
fn a_face_too_faint_to_count_as_change_is_found_by_the_refresh() {
    let refresh = 40;
    let mut gate = MotionGate::new(GateSettings {
        refresh_frames: refresh,
        threshold: 255,
        ..GateSettings::default()
    });
    let empty = scene(&[], 0);
    let (found, _) = gate.faces(&empty, squares);
    assert!(found.is_empty());
    // With threshold 255 no block ever counts as changed: only the refresh can find it.
    let f = face(400, 200, 48);
    let frame = scene(&[f], 0);
    let first_found = (1..=refresh + 1).find(|_| covers(&gate.faces(&frame, squares).0, &f));
    assert!(first_found.is_some(), "not found within {refresh} frames");
}

#[test]
fn a_camera_that_moves_or_changes_size_is_scanned_whole() {
    let mut gate = MotionGate::new(GateSettings::default());
    let f = face(100, 100, 48);
    gate.faces(&scene(&[f], 0), squares);
    // Everything shifts (the camera was knocked): whole-frame scan.
    let (found, report) = gate.faces(&scene(&[face(140, 100, 48)], 17), squares);
    assert!(report.full_scan, "{report:?}");
    assert!(covers(&found, &face(140, 100, 48)));
    assert!(!covers(&found, &f), "the old place is forgotten: {found:?}");
    let small = GrayImage::from_pixel(320, 180, Luma([50]));
    assert!(gate.faces(&small, squares).1.full_scan);
}

#[test]
fn rescan_every_frame_scans_every_frame_whole() {
    let mut gate = MotionGate::new(GateSettings {
        refresh_frames: 1,
        ..GateSettings::default()
    });
    let frame = scene(&[face(10, 10, 48)], 0);
    for _ in 0..3 {
        assert!(gate.faces(&frame, squares).1.full_scan);
    }
}
