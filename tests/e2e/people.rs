#![allow(clippy::unwrap_used)]
//! People seen from above, on a real camera stream: OpenCV's sample video `vtest.avi`
//! (pedestrians filmed from a first-floor window; fetched and decoded by
//! `tests/data/fetch-people-video.sh`, which `.ci/run` calls). Their faces are a few pixels
//! wide, below any face detector's smallest window, so the face detectors alone leave them
//! visible; the camera's moving-region mask (`redact::moving`) must fill every person boxed by
//! hand in `tests/data/people_boxes.json`, while leaving most of the picture (lawn, road,
//! buildings) to the shelf analytics.

use std::path::{Path, PathBuf};

use backroom_store_node::redact::motion::{GateSettings, MotionGate};
use backroom_store_node::redact::moving::MaskSettings;
use backroom_store_node::redact::{FILL, Redactor, Region};
use image::RgbImage;

use crate::redaction::{covered, region};

/// Share of a labelled person that must be filled for them to count as redacted.
const COVERED: f64 = 0.9;
/// Capture time between the decoded frames (every second frame of a 10 frames/s video).
const FRAME_MS: i64 = 200;
/// A busy scene: parts of the picture are still for a few seconds at a time only.
const SETTLE_MS: i64 = 5_000;
/// Mean share of the picture filled once the background is learned: the people and their
/// surroundings, not the scene.
const MAX_FILLED_SHARE: f64 = 0.3;

fn video_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/people/vtest");
    if dir.join(".complete").is_file() {
        return Some(dir);
    }
    assert!(
        !std::env::var("BACKROOM_REQUIRE_PEOPLE").is_ok_and(|v| v == "1"),
        "BACKROOM_REQUIRE_PEOPLE=1 but {} lacks the frames: run tests/data/fetch-people-video.sh",
        dir.display()
    );
    eprintln!(
        "skipped: no people video in {} (run tests/data/fetch-people-video.sh)",
        dir.display()
    );
    None
}

fn labels() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/people_boxes.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn filled_share(frame: &RgbImage) -> f64 {
    let filled = frame.pixels().filter(|p| p.0 == FILL).count();
    filled as f64 / f64::from(frame.width() * frame.height())
}

/// What one pass over the stream gave: per labelled person (frame, box, share filled), and the
/// mean filled share of the frames after the first `SETTLE_MS * 2`.
struct Pass {
    people: Vec<(String, Region, f64)>,
    mean_filled: f64,
}

fn gate_kind(gate: &MotionGate) -> &'static str {
    if gate.masks_moving() {
        "masked"
    } else {
        "faces"
    }
}

/// `BACKROOM_PEOPLE_SAVE=DIR` writes the redacted labelled frames (and every 50th) there, to
/// look at.
fn pass(dir: &Path, redactor: &Redactor, mut gate: MotionGate) -> Pass {
    let labels = labels();
    let mut frames: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    frames.sort();
    assert_eq!(frames.len(), 150, "{}", dir.display());
    let mut people = Vec::new();
    let (mut filled, mut counted) = (0.0, 0u32);
    for path in &frames {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let n: i64 = name.trim_end_matches(".jpg").parse().unwrap();
        let captured = n * FRAME_MS / 2;
        let mut frame = backroom_store_node::redact::decode(&std::fs::read(path).unwrap()).unwrap();
        redactor.redact_gated(&mut frame, &mut gate, captured);
        if captured >= 2 * SETTLE_MS {
            filled += filled_share(&frame);
            counted += 1;
        }
        if let Some(out) = std::env::var_os("BACKROOM_PEOPLE_SAVE")
            && (n % 50 == 0 || labels["frames"][&name].is_array())
        {
            let out = Path::new(&out).join(format!("{}-{name}", gate_kind(&gate)));
            frame.save(&out).unwrap();
        }
        if let Some(boxes) = labels["frames"][&name].as_array() {
            for b in boxes {
                let label = region(b);
                people.push((name.clone(), label, covered(&frame, &label)));
            }
        }
    }
    Pass {
        people,
        mean_filled: filled / f64::from(counted.max(1)),
    }
}

#[test]
fn people_seen_from_above_are_filled_by_the_moving_region_mask() {
    let Some(dir) = video_dir() else { return };
    let redactor = Redactor::new().unwrap();
    let mask = MaskSettings {
        settle_ms: SETTLE_MS,
        ..MaskSettings::default()
    };
    let masked = pass(
        &dir,
        &redactor,
        MotionGate::with_moving_mask(GateSettings::default(), mask),
    );
    let faces_only = pass(&dir, &redactor, MotionGate::new(GateSettings::default()));
    let count = |p: &Pass| p.people.iter().filter(|(_, _, s)| *s >= COVERED).count();
    let total = masked.people.len();
    assert_eq!(total, 20, "labelled people");
    eprintln!(
        "people filled (≥ {:.0}% of their box): faces only {}/{total}, with the moving-region mask {}/{total}; \
         mean share of the picture filled after learning: faces only {:.1}%, with the mask {:.1}%",
        COVERED * 100.0,
        count(&faces_only),
        count(&masked),
        faces_only.mean_filled * 100.0,
        masked.mean_filled * 100.0,
    );
    for (name, label, share) in &masked.people {
        eprintln!("{name} {label:?}: {:.0}% filled", share * 100.0);
    }
    let missed: Vec<_> = masked
        .people
        .iter()
        .filter(|(_, _, s)| *s < COVERED)
        .collect();
    assert!(missed.is_empty(), "people left visible: {missed:?}");
    assert!(
        masked.mean_filled <= MAX_FILLED_SHARE,
        "the mask filled {:.1}% of the picture on average: more than the people",
        masked.mean_filled * 100.0
    );
}
