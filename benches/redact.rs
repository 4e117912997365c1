//! Redaction speed at 1280×720 on one core: the node's whole redaction of a frame (grey
//! conversion, the default detectors, the fill), each detector alone, and the previous default
//! detector pair (SeetaFace + Haar profile) in the same run.
//!
//! `cargo bench --bench redact`. The frame is a real photograph: `astronaut.png` (fetched by
//! `tests/data/fetch-face-photos.sh`) scaled to 720 rows and set twice, at two sizes, on a
//! 1280×720 frame of the photo's own background tiles, so the detectors scan real texture and
//! real faces. Without the photos the bench says so and uses a synthetic frame (gradients and
//! noise; no faces). Figures: median of 15 runs after 2 warm-ups. Then one camera's stream
//! through the motion gate (`redact::motion`): a still scene, and the photo walking.

use std::path::Path;
use std::time::Instant;

use backroom_store_node::redact::{Detectors, Redactor, RedactorSettings, decode};
use image::{Rgb, RgbImage, imageops};
use rand::{Rng, SeedableRng};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const RUNS: usize = 15;

fn frame() -> (RgbImage, &'static str) {
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/faces/astronaut.png");
    match std::fs::read(&photo).ok().and_then(|b| decode(&b).ok()) {
        Some(photo) => {
            let mut frame = RgbImage::new(WIDTH, HEIGHT);
            // Background: the photo's top-right corner (wall and shuttle), tiled.
            let tile = imageops::crop_imm(&photo, 312, 0, 200, 200).to_image();
            for y in (0..HEIGHT).step_by(200) {
                for x in (0..WIDTH).step_by(200) {
                    imageops::overlay(&mut frame, &tile, x.into(), y.into());
                }
            }
            let large = imageops::resize(&photo, 720, 720, imageops::FilterType::Triangle);
            let small = imageops::resize(&photo, 300, 300, imageops::FilterType::Triangle);
            imageops::overlay(&mut frame, &large, 0, 0);
            imageops::overlay(&mut frame, &small, 900, 300);
            (
                frame,
                "astronaut.png at 720 and 300 px on its own background",
            )
        }
        None => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let frame = RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
                let n: u8 = rng.random_range(0..40);
                Rgb([(x / 5) as u8 + n, (y / 3) as u8 + n, 128 + n / 2])
            });
            (
                frame,
                "synthetic (no photos: run tests/data/fetch-face-photos.sh)",
            )
        }
    }
}

fn median_ms(mut run: impl FnMut()) -> f64 {
    for _ in 0..2 {
        run();
    }
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

/// Frames of each gated stream.
const STREAM: u32 = 40;

/// Capture times of the streams: 30 frames/s.
const FRAME_MS: i64 = 33;

/// One gated stream's figures: mean ms per frame when still, when the figure walks, and the
/// walking frames' mean scanned and filled-as-moving shares.
#[derive(Clone, Copy)]
struct Stream {
    still_ms: f64,
    walking_ms: f64,
    scanned: f32,
    masked: f32,
}

/// Motion-gated redaction of a camera stream made of the photo (when present): the mean cost
/// per frame of a still scene (after its first, whole scan) and of the photo at 300 pixels
/// walking across its own background; and the walking frames' mean scanned share. With
/// `mask_moving`, the gate also fills what moves against the learned background
/// (`redact::moving`); its background is learned first (two frames of the empty scene, the
/// settle time apart, then the first whole scan).
fn gated_stream(redactor: &Redactor, mask_moving: bool) -> Option<Stream> {
    use backroom_store_node::redact::motion::{GateSettings, MotionGate};
    use backroom_store_node::redact::moving::MaskSettings;
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/faces/astronaut.png");
    let photo = decode(&std::fs::read(&photo).ok()?).ok()?;
    let mut background = RgbImage::new(WIDTH, HEIGHT);
    let tile = imageops::crop_imm(&photo, 312, 0, 200, 200).to_image();
    for y in (0..HEIGHT).step_by(200) {
        for x in (0..WIDTH).step_by(200) {
            imageops::overlay(&mut background, &tile, x.into(), y.into());
        }
    }
    let person = imageops::resize(&photo, 300, 300, imageops::FilterType::Triangle);
    let at = |x: u32| {
        let mut frame = background.clone();
        imageops::overlay(&mut frame, &person, x.into(), 300);
        frame
    };
    let mask = MaskSettings::default();
    let run = |frames: &mut dyn FnMut(u32) -> RgbImage| {
        let mut start_ms = 0;
        let mut gate = if mask_moving {
            let mut gate = MotionGate::with_moving_mask(GateSettings::default(), mask);
            for _ in 0..2 {
                redactor.redact_gated(&mut background.clone(), &mut gate, start_ms);
                start_ms += mask.settle_ms;
            }
            gate
        } else {
            MotionGate::new(GateSettings::default())
        };
        redactor.redact_gated(&mut frames(0), &mut gate, start_ms);
        let (mut total, mut scanned, mut masked) = (0.0, 0.0, 0.0);
        for t in 1..=STREAM {
            let mut frame = frames(t);
            let start = Instant::now();
            let captured = start_ms + i64::from(t) * FRAME_MS;
            let (_, report) = redactor.redact_gated(&mut frame, &mut gate, captured);
            total += start.elapsed().as_secs_f64() * 1e3;
            scanned += report.scanned;
            masked += report.masked;
        }
        (
            total / f64::from(STREAM),
            scanned / STREAM as f32,
            masked / STREAM as f32,
        )
    };
    let still = at(100);
    let (still_ms, _, _) = run(&mut |_| still.clone());
    let (walking_ms, scanned, masked) = run(&mut |t| at(100 + t * 8));
    Some(Stream {
        still_ms,
        walking_ms,
        scanned,
        masked,
    })
}

fn main() -> anyhow::Result<()> {
    let redactor = Redactor::new()?;
    let (frame, what) = frame();
    let gray = imageops::grayscale(&frame);
    println!("redaction bench: {WIDTH}x{HEIGHT}, one thread; frame: {what}");
    // The same frame for benches/redact_opencv.py (OpenCV's detectors on identical pixels).
    if let Some(path) = std::env::var_os("BACKROOM_BENCH_SAVE_FRAME") {
        frame.save(&path)?;
        println!("frame written to {}", Path::new(&path).display());
    }
    let mut regions = Vec::new();
    let whole = median_ms(|| {
        let mut copy = frame.clone();
        regions = redactor.redact(&mut copy);
    });
    let mtcnn = median_ms(|| {
        std::hint::black_box(redactor.detect_mtcnn(&gray));
    });
    let frontal = median_ms(|| {
        std::hint::black_box(redactor.detect_frontal(&gray));
    });
    let profile = median_ms(|| {
        std::hint::black_box(redactor.detect_profile(&gray));
    });
    let stream = gated_stream(&redactor, false);
    let masked_stream = gated_stream(&redactor, true);
    // The detectors the node ran before MTCNN (SeetaFace + the Haar profile cascade), in the
    // same run, for comparison.
    let cascades = Redactor::with_settings(RedactorSettings {
        detectors: Detectors {
            mtcnn: false,
            seeta_frontal: true,
            haar_profile: true,
        },
        ..RedactorSettings::default()
    })?;
    let cascades_whole = median_ms(|| {
        let mut copy = frame.clone();
        std::hint::black_box(cascades.redact(&mut copy));
    });
    let cascades_stream = gated_stream(&cascades, false);
    println!("regions filled: {}", regions.len());
    println!("| step | ms per frame | frames/s |");
    println!("| --- | --- | --- |");
    for (name, ms) in [
        ("whole redaction (grey, default detectors, fill)", whole),
        ("MTCNN (tract-onnx), the default detector", mtcnn),
        ("SeetaFace frontal (rustface), off by default", frontal),
        ("Haar profile, frame + mirror, off by default", profile),
    ] {
        println!("| {name} | {ms:.1} | {:.1} |", 1e3 / ms);
    }
    let streams = |label: &str, stream: Option<Stream>| {
        if let Some(s) = stream {
            println!(
                "| {label}: gated stream, nothing moving (mean of {STREAM} frames) | {:.1} | {:.1} |",
                s.still_ms,
                1e3 / s.still_ms
            );
            println!(
                "| {label}: gated stream, a 300-px figure walking 8 px/frame (mean of {STREAM}; {:.0}% scanned, {:.0}% filled as moving) | {:.1} | {:.1} |",
                s.scanned * 100.0,
                s.masked * 100.0,
                s.walking_ms,
                1e3 / s.walking_ms
            );
        }
    };
    streams("default", stream);
    streams(
        "default + moving-region mask (the node's image sources)",
        masked_stream,
    );
    println!(
        "| previous default (SeetaFace + Haar profile): whole redaction | {cascades_whole:.1} | {:.1} |",
        1e3 / cascades_whole
    );
    streams("previous default", cascades_stream);
    let verdict = |ms: f64| if 1e3 / ms >= 30.0 { "met" } else { "NOT met" };
    let walking = |stream: Option<Stream>| {
        stream.map_or("not measured (no photo)", |s| verdict(s.walking_ms))
    };
    println!(
        "target >= 30 frames/s on one core: whole frame {}; gated stream with a figure walking {}; \
         with the moving-region mask {}",
        verdict(whole),
        walking(stream),
        walking(masked_stream),
    );
    Ok(())
}
