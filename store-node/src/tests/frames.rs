//! Frame sources, the capture thread's load shedding, and slot crops.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use backroom_datasets::{CameraReplay, IMAGE_SIZE, PIXELS_PER_IMAGE};
use image::{Rgb, RgbImage};

use crate::frames::capture::spawn_capture;
use crate::frames::sources::{
    FrameSource, ImageSequence, Next, SETTLE, SyntheticShelf, WatchedDir, synthetic_grid,
};
use crate::frames::{RawFrame, SlotError, SlotGrid};
use crate::redact::Redactor;

fn solid(width: u32, height: u32, rgb: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(width, height, Rgb(rgb))
}

fn write_png(path: &Path, image: &RgbImage) {
    image
        .save(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn set_mtime(path: &Path, ago: Duration) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{e}"));
    file.set_modified(SystemTime::now() - ago)
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn recv(frames: &mut tokio::sync::mpsc::Receiver<RawFrame>) -> Option<RawFrame> {
    tokio::time::timeout(Duration::from_secs(10), frames.recv())
        .await
        .unwrap_or_else(|_| panic!("no frame within 10 s"))
}

/// The colour of a raw frame's first pixel, through the redactor (the only way to see pixels).
fn first_pixel(redactor: &Redactor, frame: RawFrame) -> [u8; 3] {
    redactor.redact_frame(frame).image.get_pixel(0, 0).0
}

#[test]
fn a_slot_grid_cuts_cells_row_by_row_in_chw_and_refuses_one_outside_the_frame() {
    // Left half red, right half blue, bottom row green: a 2 x 2 grid of 64-pixel cells.
    let mut frame = solid(128, 128, [255, 0, 0]);
    for y in 0..128 {
        for x in 0..128 {
            if y >= 64 {
                frame.put_pixel(x, y, Rgb([0, 255, 0]));
            } else if x >= 64 {
                frame.put_pixel(x, y, Rgb([0, 0, 255]));
            }
        }
    }
    let grid = SlotGrid {
        x: 0,
        y: 0,
        width: 128,
        height: 128,
        rows: 2,
        cols: 2,
    };
    let crops = grid.crops(&frame).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(crops.len(), 4 * PIXELS_PER_IMAGE);
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let channel_means: Vec<[f32; 3]> = crops
        .chunks(PIXELS_PER_IMAGE)
        .map(|crop| {
            let mean =
                |c: usize| crop[c * plane..(c + 1) * plane].iter().sum::<f32>() / plane as f32;
            [mean(0), mean(1), mean(2)]
        })
        .collect();
    assert_eq!(
        channel_means,
        vec![
            [1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0]
        ]
    );
    // A cell of another size is scaled to the model's input.
    let half = SlotGrid {
        width: 64,
        height: 32,
        rows: 1,
        cols: 1,
        ..grid
    };
    assert_eq!(half.crops(&frame).map(|c| c.len()), Ok(PIXELS_PER_IMAGE));
    let outside = SlotGrid { x: 1, ..grid };
    assert!(matches!(
        outside.crops(&frame),
        Err(SlotError::OutsideFrame {
            frame_width: 128,
            ..
        })
    ));
}

#[test]
fn the_synthetic_shelf_frame_gives_back_its_crops() {
    let replay = CameraReplay::new(2024, 1, 0, 8, 0, 60);
    let mut reference = replay.clone();
    let mut shelf = SyntheticShelf::new(replay, Duration::from_millis(1), 0, 60);
    let grid = synthetic_grid(8);
    assert_eq!((grid.rows, grid.cols), (2, 6));
    let redactor = Redactor::new().unwrap_or_else(|e| panic!("{e}"));
    let Ok(Next::Ready(ticket)) = shelf.next(Instant::now()) else {
        panic!("the first frame is due at once");
    };
    assert_eq!(ticket.captured_unix_ms, 0);
    let raw = shelf.load(ticket).unwrap_or_else(|e| panic!("{e}"));
    let frame = redactor.redact_frame(raw);
    assert!(
        frame.regions.is_empty(),
        "a face found on a shelf: {:?}",
        frame.regions
    );
    let crops = grid.crops(&frame.image).unwrap_or_else(|e| panic!("{e}"));
    let expected = reference.next_frame().crops.images;
    // 8 slots; the grid's last 4 cells are empty (black).
    assert_eq!(crops.len(), 12 * PIXELS_PER_IMAGE);
    let worst = crops[..expected.len()]
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0_f32, f32::max);
    assert!(
        worst <= 0.5 / 255.0 + 1e-6,
        "8-bit rendering is off by {worst}"
    );
}

#[tokio::test]
async fn a_sequence_plays_in_name_order_with_the_recordings_time_and_then_ends() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write_png(&dir.path().join("frame-002.png"), &solid(8, 8, [0, 255, 0]));
    write_png(&dir.path().join("frame-001.png"), &solid(8, 8, [255, 0, 0]));
    write_png(&dir.path().join("frame-003.png"), &solid(8, 8, [0, 0, 255]));
    write_png(&dir.path().join(".hidden.png"), &solid(8, 8, [9, 9, 9]));
    std::fs::write(dir.path().join("notes.txt"), b"not a frame").unwrap_or_else(|e| panic!("{e}"));
    let source = ImageSequence::open(
        5,
        dir.path().to_owned(),
        Duration::from_millis(2),
        false,
        1000,
        60,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source.len(), 3);
    let mut capture = spawn_capture(Box::new(source), 8).unwrap_or_else(|e| panic!("{e}"));
    let redactor = Redactor::new().unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    while let Some(frame) = recv(&mut capture.frames).await {
        assert_eq!(frame.camera_id(), 5);
        seen.push((frame.captured_unix_ms(), first_pixel(&redactor, frame)));
    }
    assert_eq!(
        seen,
        vec![
            (1_000_000, [255, 0, 0]),
            (1_060_000, [0, 255, 0]),
            (1_120_000, [0, 0, 255])
        ]
    );
    assert_eq!(capture.counters.snapshot(), (3, 0, 0));
    // The recording is never modified.
    assert!(dir.path().join("frame-001.png").exists());
    let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let refused = ImageSequence::open(
        0,
        empty.path().to_owned(),
        Duration::from_millis(1),
        true,
        0,
        1,
    );
    assert!(refused.is_err_and(|e| e.to_string().contains("holds no .jpg")));
}

#[tokio::test]
async fn frames_arriving_faster_than_they_are_processed_are_dropped_not_queued() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write_png(&dir.path().join("a.png"), &solid(16, 16, [1, 2, 3]));
    let source = ImageSequence::open(
        0,
        dir.path().to_owned(),
        Duration::from_millis(1),
        true,
        0,
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut capture = spawn_capture(Box::new(source), 2).unwrap_or_else(|e| panic!("{e}"));
    // A consumer that takes one frame per 200 ms while frames arrive every millisecond.
    let mut taken = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if recv(&mut capture.frames).await.is_some() {
            taken += 1;
        }
    }
    let (captured, dropped, unreadable) = capture.counters.snapshot();
    assert_eq!(taken, 3);
    assert_eq!(unreadable, 0);
    // At least one drop per 30 ms even on a loaded machine (about one per millisecond idle).
    assert!(
        dropped >= 20,
        "only {dropped} frames were dropped in 600 ms"
    );
    // Never more than the queue's two frames waiting.
    assert!(
        captured <= taken + 2 + 1,
        "{captured} frames were queued for {taken} taken"
    );
    let mut waiting = 0;
    while capture.frames.try_recv().is_ok() {
        waiting += 1;
    }
    assert!(waiting <= 2, "{waiting} frames were waiting");
    // Closing the queue stops the thread.
    drop(capture.frames);
    let stopped = tokio::task::spawn_blocking(move || capture.thread.join()).await;
    assert!(matches!(stopped, Ok(Ok(()))));
}

#[tokio::test]
async fn a_watched_directory_consumes_settled_frames_oldest_first_and_leaves_other_files() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = |name: &str| dir.path().join(name);
    write_png(&path("b.png"), &solid(8, 8, [0, 255, 0]));
    set_mtime(&path("b.png"), Duration::from_secs(10));
    write_png(&path("a.png"), &solid(8, 8, [255, 0, 0]));
    set_mtime(&path("a.png"), Duration::from_secs(5));
    std::fs::write(path("broken.jpg"), b"\xff\xd8\xff not really a jpeg")
        .unwrap_or_else(|e| panic!("{e}"));
    set_mtime(&path("broken.jpg"), Duration::from_secs(1));
    std::fs::write(path("readme.txt"), b"left alone").unwrap_or_else(|e| panic!("{e}"));
    let source = WatchedDir::new(3, dir.path().to_owned(), Duration::from_millis(20));
    let mut capture = spawn_capture(Box::new(source), 4).unwrap_or_else(|e| panic!("{e}"));
    let redactor = Redactor::new().unwrap_or_else(|e| panic!("{e}"));

    let older = recv(&mut capture.frames)
        .await
        .unwrap_or_else(|| panic!("closed"));
    let newer = recv(&mut capture.frames)
        .await
        .unwrap_or_else(|| panic!("closed"));
    assert!(older.captured_unix_ms() < newer.captured_unix_ms());
    assert_eq!(first_pixel(&redactor, older), [0, 255, 0]);
    assert_eq!(first_pixel(&redactor, newer), [255, 0, 0]);

    // A frame written now is read once it has settled.
    let written = Instant::now();
    write_png(&path("c.png"), &solid(8, 8, [0, 0, 255]));
    let fresh = recv(&mut capture.frames)
        .await
        .unwrap_or_else(|| panic!("closed"));
    // File times come from a coarse clock that may lag by a few milliseconds.
    assert!(written.elapsed() + Duration::from_millis(50) >= SETTLE);
    assert_eq!(first_pixel(&redactor, fresh), [0, 0, 255]);

    // Every frame file is gone (the broken one too, counted unreadable); the rest stays.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["readme.txt".to_owned()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while capture.counters.snapshot() != (3, 0, 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(capture.counters.snapshot(), (3, 0, 1));
}

#[test]
fn redaction_keeps_the_frames_tags_and_size() {
    let redactor = Redactor::new().unwrap_or_else(|e| panic!("{e}"));
    let raw = RawFrame::new(9, 1234, solid(320, 200, [10, 20, 30]));
    assert_eq!(raw.dimensions(), (320, 200));
    assert!(
        !format!("{raw:?}").contains("10, 20, 30"),
        "Debug must not print pixels"
    );
    let frame = redactor.redact_frame(raw);
    assert_eq!((frame.camera_id, frame.captured_unix_ms), (9, 1234));
    assert_eq!(frame.image.dimensions(), (320, 200));
    assert!(frame.regions.is_empty());
}
