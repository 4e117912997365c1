//! The encrypted local store: the key file, sealing, retention and deletion requests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use image::{Rgb, RgbImage};

use crate::frames::RedactedFrame;
use crate::local_store::{DeletionRequest, LocalStore, StoreError, Vault, VaultError};
use crate::metrics_sync::MetricQueue;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const NOW: i64 = 1_800_000_000_000;

/// A frame whose every row is a distinct gradient, so any 12-byte run of it is recognisable.
fn frame(camera_id: u32, captured_unix_ms: i64) -> RedactedFrame {
    let image = RgbImage::from_fn(64, 48, |x, y| {
        Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    });
    RedactedFrame {
        camera_id,
        captured_unix_ms,
        image,
        regions: Vec::new(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.extend(std::fs::read(&path).unwrap_or_else(|e| panic!("{e}")));
            }
        }
    }
    out
}

async fn open_store(dir: &Path) -> (MetricQueue, LocalStore) {
    let queue = MetricQueue::open(dir)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let vault =
        Vault::open_or_create(&dir.join("local-store.key")).unwrap_or_else(|e| panic!("{e}"));
    let store = LocalStore::new(queue.pool.clone(), dir, Arc::new(vault));
    (queue, store)
}

#[test]
fn sealed_data_opens_only_with_its_key_and_context_and_unaltered() {
    let vault = Vault::ephemeral();
    let sealed = vault
        .seal(b"frame-event:1:2", b"slot states")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sealed.starts_with(b"BKR1"));
    assert!(!contains(&sealed, b"slot states"));
    assert_eq!(
        vault
            .open_sealed(b"frame-event:1:2", &sealed)
            .ok()
            .as_deref(),
        Some(&b"slot states"[..])
    );
    // Two seals of the same data differ (fresh nonce).
    let again = vault
        .seal(b"frame-event:1:2", b"slot states")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(sealed, again);
    // Moved to another frame, altered, truncated, or under another key: refused.
    assert!(matches!(
        vault.open_sealed(b"frame-event:1:3", &sealed),
        Err(VaultError::Authentication)
    ));
    let mut altered = sealed.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    assert!(matches!(
        vault.open_sealed(b"frame-event:1:2", &altered),
        Err(VaultError::Authentication)
    ));
    assert!(matches!(
        vault.open_sealed(b"frame-event:1:2", &sealed[..20]),
        Err(VaultError::Format)
    ));
    assert!(matches!(
        Vault::ephemeral().open_sealed(b"frame-event:1:2", &sealed),
        Err(VaultError::Authentication)
    ));
}

#[cfg(unix)]
#[test]
fn the_key_file_is_created_private_reused_and_refused_when_others_can_read_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("keys/local-store.key");
    let first = Vault::open_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("keys")), 0o700);
    // The same key on the next start.
    let second = Vault::open_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
    let sealed = first.seal(b"x", b"data").unwrap_or_else(|e| panic!("{e}"));
    assert!(second.open_sealed(b"x", &sealed).is_ok());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = Vault::open_or_create(&path)
        .map(|_| ())
        .expect_err("must be refused");
    assert!(matches!(
        refused,
        VaultError::Permissions { mode: 0o644, .. }
    ));
    assert!(refused.to_string().contains("chmod 600"), "{refused}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&path, "not hex\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Vault::open(&path),
        Err(VaultError::Malformed { .. })
    ));
    assert!(matches!(
        Vault::open(&dir.path().join("missing.key")),
        Err(VaultError::Read { .. })
    ));
}

#[tokio::test]
async fn events_and_images_are_stored_sealed_and_read_back() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (queue, store) = open_store(dir.path()).await;
    let original = frame(2, 1_700_000_000_000);
    let stored = store
        .record(&original, &[0, 1, 1, 0], true, NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let file = stored
        .image_file
        .clone()
        .unwrap_or_else(|| panic!("image not kept"));
    let without_image = store
        .record(&frame(2, 1_700_000_060_000), &[1, 1, 1, 1], false, NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(without_image.image_file, None);
    assert_eq!(store.counts().await.ok(), Some((2, 1)));

    let event = store.event(&stored).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(event.slot_states, vec![0, 1, 1, 0]);
    let image = store
        .image(&stored)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no image"));
    assert_eq!(image.dimensions(), (64, 48));
    let diffs: Vec<i32> = image
        .as_raw()
        .iter()
        .zip(original.image.as_raw())
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .collect();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    assert!(mean <= 4.0, "JPEG round trip is off by {mean} on average");

    // On disk: neither the pixels nor the event appear in any file of the data directory.
    queue.close().await;
    let disk = all_bytes(dir.path());
    let row = &original.image.as_raw()[64 * 3 * 10..64 * 3 * 10 + 12];
    assert!(
        !contains(&disk, row),
        "a pixel run of the frame is on disk in the clear"
    );
    assert!(
        !contains(&disk, b"[0,1,1,0]"),
        "an event is on disk in the clear"
    );
    // Positive control: the same scan finds the run in the pixels themselves.
    assert!(contains(original.image.as_raw(), row));
    let sealed_file =
        std::fs::read(store.frame_dir().join(&file)).unwrap_or_else(|e| panic!("{e}"));
    assert!(sealed_file.starts_with(b"BKR1"));
}

#[tokio::test]
async fn retention_deletes_what_is_older_than_the_window_and_logs_the_sweep() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_queue, store) = open_store(dir.path()).await;
    let old = store
        .record(&frame(0, 1), &[0], true, NOW - 8 * DAY_MS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let recent = store
        .record(&frame(0, 2), &[1], true, NOW - HOUR_MS)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let old_file = store
        .frame_dir()
        .join(old.image_file.clone().unwrap_or_default());
    assert!(old_file.exists());

    let week = Duration::from_secs(7 * 24 * 3600);
    let record = store
        .prune(week, NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("nothing pruned"));
    assert_eq!(
        (
            record.kind.as_str(),
            record.frames_deleted,
            record.images_deleted
        ),
        ("retention", 1, 1)
    );
    assert!(!old_file.exists(), "the old image survived retention");
    let left = store
        .frames_between(None, 0, i64::MAX)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left, vec![recent]);
    // Nothing more to do: nothing logged.
    assert_eq!(store.prune(week, NOW).await.ok(), Some(None));
    assert_eq!(store.deletions().await.ok().map(|d| d.len()), Some(1));
}

#[tokio::test]
async fn a_deletion_request_removes_its_window_and_is_recorded_even_when_nothing_matches() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_queue, store) = open_store(dir.path()).await;
    for (camera, captured) in [(0, 1_000), (0, 2_000), (0, 3_000), (1, 2_000)] {
        store
            .record(&frame(camera, captured), &[0], true, NOW)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let files_before = std::fs::read_dir(store.frame_dir().join("0"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(files_before, 3);
    let request = DeletionRequest {
        camera_id: Some(0),
        from_unix_ms: 1_500,
        to_unix_ms: 3_000,
        requested_by: "store manager".to_owned(),
        reason: "customer request #42".to_owned(),
    };
    let record = store
        .delete_matching(&request, NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((record.frames_deleted, record.images_deleted), (1, 1));
    let left: Vec<(u32, i64)> = store
        .frames_between(None, 0, i64::MAX)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|f| (f.camera_id, f.captured_unix_ms))
        .collect();
    assert_eq!(left, vec![(0, 1_000), (1, 2_000), (0, 3_000)]);
    assert_eq!(
        std::fs::read_dir(store.frame_dir().join("0"))
            .map(|d| d.count())
            .ok(),
        Some(2)
    );

    let nothing = DeletionRequest {
        camera_id: None,
        from_unix_ms: 10_000,
        to_unix_ms: 20_000,
        ..request
    };
    let empty = store
        .delete_matching(&nothing, NOW + 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((empty.frames_deleted, empty.images_deleted), (0, 0));
    let log = store.deletions().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].requested_by, "store manager");
    assert_eq!(log[0].reason, "customer request #42");
    assert_eq!(log[0].camera_id, Some(0));
    assert_eq!(log[1].camera_id, None);
}

#[tokio::test]
async fn an_image_that_cannot_be_written_still_leaves_its_event() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_queue, store) = open_store(dir.path()).await;
    // The frame directory is a file: every image write fails, as on a full or broken disk.
    std::fs::write(store.frame_dir(), b"in the way").unwrap_or_else(|e| panic!("{e}"));
    let result = store.record(&frame(0, 5), &[1, 0], true, NOW).await;
    assert!(
        matches!(result, Err(StoreError::Write { .. })),
        "{result:?}"
    );
    assert_eq!(store.counts().await.ok(), Some((1, 0)));
    let rows = store
        .frames_between(None, 0, i64::MAX)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let event = store
        .event(&rows[0])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(event.slot_states, vec![1, 0]);
}

#[test]
fn the_node_checks_an_export_task_itself() {
    use crate::frame_export::check_task;
    use backroom_proto::v1::FrameExportTask;
    let task = FrameExportTask {
        request_id: "fr-1".into(),
        camera_id: Some(0),
        from_unix_ms: NOW - HOUR_MS,
        to_unix_ms: NOW,
        recipient_public_key: vec![7; 32],
        expires_unix_ms: NOW + HOUR_MS,
        max_bytes: 1 << 20,
    };
    assert!(check_task(&task, NOW).is_ok());
    let expired = FrameExportTask {
        expires_unix_ms: NOW,
        ..task.clone()
    };
    assert!(check_task(&expired, NOW).is_err_and(|e| e.contains("expired")));
    let too_long = FrameExportTask {
        from_unix_ms: NOW - DAY_MS - 1,
        ..task.clone()
    };
    assert!(check_task(&too_long, NOW).is_err_and(|e| e.contains("24 hours")));
    let backwards = FrameExportTask {
        from_unix_ms: NOW,
        to_unix_ms: NOW,
        ..task.clone()
    };
    assert!(check_task(&backwards, NOW).is_err());
    let bad_key = FrameExportTask {
        recipient_public_key: vec![7; 31],
        ..task
    };
    assert!(check_task(&bad_key, NOW).is_err_and(|e| e.contains("32-byte")));
}
