//! No unredacted pixel reaches disk or the wire. A store node watches a drop directory; real
//! photographs with labelled faces are dropped into it (stamped over six hours, so metric
//! windows close and sync), the node redacts, infers, stores and trains in a DP round, and then
//! everything is scanned:
//! - the drop directory is empty (raw frames are consumed, not kept);
//! - no run of the faces' raw pixels, and no piece of the photo files, appears in any file the
//!   node or the coordinator wrote, nor in any byte a node sent (the coordinator's wire tap);
//! - every image the node kept, decrypted with its key, has every labelled face filled.
//!
//! A byte scan cannot see a raw face re-encoded (as JPEG, say); the decrypted check covers what
//! the node keeps, and the wire scan's schema check (`wire_scan.rs`) covers what it sends.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use backroom_store_node::config::{FrameSourceSettings, LocalStoreSettings};
use backroom_store_node::frames::SlotGrid;
use backroom_store_node::local_store;
use backroom_store_node::redact::Region;
use image::RgbImage;

use crate::redaction::{faces_dir, filled_after_jpeg, labels, region};
use crate::support::{run_round, shutdown, spec, start, test_options, wait_installed};

const FRAMES: usize = 12;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir`, with the file's path.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// 16-pixel runs of raw RGB from eight rows across the middle of a labelled face.
fn face_runs(photo: &RgbImage, face: &Region) -> Vec<Vec<u8>> {
    let raw = photo.as_raw();
    let stride = photo.width() as usize * 3;
    (0..8)
        .map(|k| {
            let y = (face.y + face.h / 4 + k * face.h / 16) as usize;
            let x = (face.x + face.w / 2 - 8) as usize;
            raw[y * stride + x * 3..y * stride + (x + 16) * 3].to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unredacted_pixel_of_a_real_face_reaches_disk_or_the_wire() {
    let Some(faces) = faces_dir() else { return };
    let labels = labels();
    let photos: Vec<(String, Vec<u8>, RgbImage, Vec<Region>)> = ["astronaut.png", "camera.png"]
        .iter()
        .map(|name| {
            let bytes = std::fs::read(faces.join(name)).unwrap_or_else(|e| panic!("{e}"));
            let decoded =
                backroom_store_node::redact::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
            let boxes = labels["photos"][*name]
                .as_array()
                .unwrap_or_else(|| panic!("no label for {name}"))
                .iter()
                .map(region)
                .collect();
            (name.to_string(), bytes, decoded, boxes)
        })
        .collect();
    let (width, height) = photos[0].2.dimensions();
    assert!(photos.iter().all(|p| p.2.dimensions() == (width, height)));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let drop_dir = dir.path().join("camera-drop");
    let staging = dir.path().join("camera-staging");
    std::fs::create_dir_all(&drop_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(&staging).unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 1);
    options.tap_connections = true;
    options.camera.source = FrameSourceSettings::Directory {
        dir: drop_dir.clone(),
        poll_interval: Duration::from_millis(50),
    };
    options.camera.slot_grid = Some(SlotGrid {
        x: 0,
        y: 0,
        width,
        height,
        rows: 2,
        cols: 2,
    });
    options.camera.slots = 4;
    options.camera.queue_frames = FRAMES;
    options.local_store = LocalStoreSettings {
        keep_image_every: Some(Duration::from_millis(1)),
        ..LocalStoreSettings::default()
    };
    let mut sandbox = start(options).await;
    // Frames read before a model is installed are redacted and dropped uncounted: wait first.
    wait_installed(&sandbox, 1).await;

    // The camera writes each frame elsewhere and renames it into the drop directory; the
    // frames are stamped half an hour apart over the last six hours.
    let six_hours_ago = SystemTime::now() - Duration::from_secs(6 * 3600);
    for i in 0..FRAMES {
        let (name, bytes, _, _) = &photos[i % photos.len()];
        let staged = staging.join(format!("{i:03}-{name}"));
        std::fs::write(&staged, bytes).unwrap_or_else(|e| panic!("{e}"));
        let file = std::fs::File::options()
            .write(true)
            .open(&staged)
            .unwrap_or_else(|e| panic!("{e}"));
        file.set_modified(six_hours_ago + Duration::from_secs(1800 * i as u64))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(file);
        std::fs::rename(&staged, drop_dir.join(format!("{i:03}-{name}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut status = sandbox.nodes[0].status.clone();
    let watch = sandbox.nodes[0].status.clone();
    tokio::time::timeout(
        Duration::from_secs(300),
        status
            .wait_for(|s| s.frames_processed >= FRAMES as u64 && s.images_stored >= FRAMES as u64),
    )
    .await
    .unwrap_or_else(|_| panic!("the node did not process its frames: {:?}", watch.borrow()))
    .unwrap_or_else(|e| panic!("{e}"));
    let round = run_round(&mut sandbox, spec(1, 0.5)).await;
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| s.windows_synced >= 5),
    )
    .await
    .unwrap_or_else(|_| panic!("no metric window synced: {:?}", watch.borrow()))
    .unwrap_or_else(|e| panic!("{e}"));
    let final_status = status.borrow().clone();
    let tap = sandbox
        .wire_tap
        .clone()
        .unwrap_or_else(|| panic!("no wire tap"));
    let node_dir = sandbox.nodes[0].config.data_dir.clone();
    let key_file = sandbox.nodes[0].config.key_file();
    let coordinator_dir = sandbox.coordinator_dir.clone();
    shutdown(sandbox).await;
    assert!(!round.round_id.is_empty());
    assert_eq!(final_status.frames_dropped, 0, "{final_status:?}");
    assert_eq!(final_status.frames_unreadable, 0, "{final_status:?}");
    assert!(
        final_status.faces_redacted >= FRAMES as u64,
        "{} regions filled in {FRAMES} frames with a face each",
        final_status.faces_redacted
    );

    // Raw frames are consumed.
    let left: Vec<_> = std::fs::read_dir(&drop_dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "raw frames left in the drop directory: {left:?}"
    );

    // Needles: raw face pixels, and 64-byte pieces of the photo files.
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, bytes, decoded, boxes) in &photos {
        for face in boxes {
            for run in face_runs(decoded, face) {
                assert!(
                    contains(decoded.as_raw(), &run),
                    "needle not from the photo"
                );
                needles.push((format!("raw face pixels of {name}"), run));
            }
        }
        for at in [bytes.len() / 4, bytes.len() / 2, 3 * bytes.len() / 4] {
            needles.push((format!("a piece of {name}"), bytes[at..at + 64].to_vec()));
        }
    }
    let mut haystacks = files_under(&node_dir);
    haystacks.extend(files_under(&coordinator_dir));
    let scanned_files = haystacks.len();
    let node_connections: Vec<_> = tap
        .connections()
        .into_iter()
        .filter(|c| c.peer.starts_with("node/"))
        .collect();
    assert!(!node_connections.is_empty());
    for connection in &node_connections {
        haystacks.push((
            PathBuf::from(format!("wire: {}", connection.peer)),
            connection.received(),
        ));
    }
    let scanned_bytes: usize = haystacks.iter().map(|(_, b)| b.len()).sum();
    for (path, bytes) in &haystacks {
        for (what, needle) in &needles {
            assert!(
                !contains(bytes, needle),
                "{what} found in {}",
                path.display()
            );
        }
    }

    // What the node kept, decrypted: every labelled face filled, the rest the photo.
    let store = local_store::open_existing(&node_dir, &key_file)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let stored = store
        .frames_between(None, 0, i64::MAX)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored.len(), FRAMES);
    for (i, frame) in stored.iter().enumerate() {
        let image = store
            .image(frame)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("frame {i} kept no image"));
        let (name, _, original, boxes) = &photos[i % photos.len()];
        for face in boxes {
            let share = filled_after_jpeg(&image, face);
            assert!(
                share >= 0.9,
                "{name}: face {face:?} only {:.0}% filled in stored frame {i}",
                share * 100.0
            );
        }
        // Away from the faces the stored frame is the photo (so the check above is not
        // passing on a blank image): the top-left corner matches within JPEG's error.
        let corner: f64 = (0..32)
            .flat_map(|y| (0..32).map(move |x| (x, y)))
            .map(|(x, y)| {
                let (a, b) = (image.get_pixel(x, y).0, original.get_pixel(x, y).0);
                a.iter()
                    .zip(b)
                    .map(|(p, q)| f64::from(p.abs_diff(q)))
                    .sum::<f64>()
                    / 3.0
            })
            .sum::<f64>()
            / 1024.0;
        assert!(
            corner <= 12.0,
            "{name}: stored frame {i} differs from the photo by {corner:.1}"
        );
        let event = store.event(frame).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.slot_states.len(), 4);
        assert!(event.faces_redacted >= 1);
    }
    eprintln!(
        "scanned {scanned_files} files and {} node connections ({scanned_bytes} bytes) for {} \
         needles: none found; {} stored frames decrypted, every labelled face filled; \
         {} regions filled in all",
        node_connections.len(),
        needles.len(),
        stored.len(),
        final_status.faces_redacted
    );
}
