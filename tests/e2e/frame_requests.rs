//! Audited raw-data requests: an ML engineer asks for a window of a store's redacted frames;
//! nothing is delivered without a privacy officer's approval, the requester cannot approve, a
//! privacy officer cannot call the admin service, only the requester can download, the export
//! opens only with the requester's secret key and holds the redacted frames of exactly that
//! window, and at expiry the request closes and the export is deleted.

use std::path::Path;
use std::time::Duration;

use backroom::{client, frames, sandbox::issue_bundle};
use backroom_coordinator::identity::Role;
use backroom_proto::v1 as pb;
use backroom_store_node::config::{FrameSourceSettings, LocalStoreSettings};
use backroom_store_node::frames::SlotGrid;
use backroom_store_node::local_store;

use crate::redaction::{faces_dir, filled_after_jpeg, labels, region};
use crate::support::{shutdown, start, test_options, wait_installed};

const START_UNIX: i64 = 1_780_000_000;

async fn request_state(admin: &mut client::AdminClient, id: &str) -> pb::FrameRequest {
    admin
        .list_frame_requests(pb::ListFrameRequestsRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .requests
        .into_iter()
        .find(|r| r.request_id == id)
        .unwrap_or_else(|| panic!("request {id} is not listed"))
}

async fn wait_state(admin: &mut client::AdminClient, id: &str, state: &str) -> pb::FrameRequest {
    for _ in 0..600 {
        let request = request_state(admin, id).await;
        if request.state == state {
            return request;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "request {id} never became {state}: {:?}",
        request_state(admin, id).await
    );
}

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: tonic::Code, text: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(text), "{status:?}");
        }
        Ok(value) => panic!("expected a refusal ({text}), got {value:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_leave_a_store_only_approved_sealed_to_the_requester_and_until_expiry() {
    let Some(faces) = faces_dir() else { return };
    let labels = labels();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let recording = dir.path().join("recording");
    std::fs::create_dir_all(&recording).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(faces.join("astronaut.png"), recording.join("a.png"))
        .unwrap_or_else(|e| panic!("{e}"));
    let face = region(&labels["photos"]["astronaut.png"][0]);

    let mut options = test_options(dir.path(), 1);
    options.camera.source = FrameSourceSettings::Sequence {
        dir: recording,
        repeat: true,
    };
    options.camera.slot_grid = Some(SlotGrid {
        x: 0,
        y: 0,
        width: 512,
        height: 512,
        rows: 2,
        cols: 2,
    });
    options.camera.slots = 4;
    options.camera.start_unix = START_UNIX;
    options.camera.seconds_per_frame = 60;
    options.camera.frame_interval = Duration::from_millis(200);
    options.local_store = LocalStoreSettings {
        keep_image_every: Some(Duration::from_millis(1)),
        ..LocalStoreSettings::default()
    };
    options.coordinator = |c| c.frame_request_sweep = Duration::from_millis(200);
    let sandbox = start(options).await;
    wait_installed(&sandbox, 1).await;
    let mut status = sandbox.nodes[0].status.clone();
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| s.images_stored >= 5),
    )
    .await
    .unwrap_or_else(|_| panic!("the node kept no images"))
    .unwrap_or_else(|e| panic!("{e}"));

    // The window: the first three frames the node kept (their capture times are in the past of
    // the recording, so no later frame falls in it).
    let node_dir = sandbox.nodes[0].config.data_dir.clone();
    let store = local_store::open_existing(&node_dir, &sandbox.nodes[0].config.key_file())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let kept = store
        .frames_between(None, 0, i64::MAX)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let from = kept[0].captured_unix_ms;
    let to = kept[2].captured_unix_ms + 1;

    let keys = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = keys.path().join("alice.key");
    let public = frames::keygen(&secret).unwrap_or_else(|e| panic!("{e:#}"));
    let officer_bundle = issue_bundle(
        &sandbox.coordinator_dir,
        Role::PrivacyOfficer,
        "olivia",
        &dir.path().join("bundles/olivia"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let other_bundle = issue_bundle(
        &sandbox.coordinator_dir,
        Role::Admin,
        "mallory",
        &dir.path().join("bundles/mallory"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let url = sandbox.coordinator_url.clone();
    let mut officer = client::privacy(&url, "localhost", &officer_bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut other = client::admin(&url, "localhost", &other_bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut admin = sandbox.admin.clone();

    let ask = |expires_in_secs: u32| pb::RequestFramesRequest {
        store_id: "store-1".into(),
        camera_id: Some(0),
        from_unix_ms: from,
        to_unix_ms: to,
        reason: "slot 3 misread as empty (ticket 17)".into(),
        recipient_public_key: public.to_vec(),
        expires_in_secs,
    };
    // Bad requests are refused with a reason.
    let mut too_long = ask(60);
    too_long.to_unix_ms = from + 25 * 3600 * 1000;
    refused(
        admin.request_frames(too_long).await,
        tonic::Code::InvalidArgument,
        "longer than 24 hours",
    );
    let mut bad_key = ask(60);
    bad_key.recipient_public_key = vec![1, 2, 3];
    refused(
        admin.request_frames(bad_key).await,
        tonic::Code::InvalidArgument,
        "32-byte X25519 key",
    );
    let mut unknown = ask(60);
    unknown.store_id = "store-9".into();
    refused(
        admin.request_frames(unknown).await,
        tonic::Code::NotFound,
        "no store",
    );

    let request = admin
        .request_frames(ask(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let id = request.request_id.clone();
    assert_eq!(request.state, "pending");
    assert_eq!(request.requested_by, "pilot-admin");

    // Without approval nothing moves: no download, and the node delivers nothing.
    refused(
        admin
            .download_frames(pb::GetFrameRequestRequest {
                request_id: id.clone(),
            })
            .await
            .map(|_| ()),
        tonic::Code::FailedPrecondition,
        "not approved",
    );
    // The requester's certificate cannot reach the privacy service; the officer's cannot reach
    // the admin service.
    let mut admin_as_officer = client::privacy(&url, "localhost", &sandbox.admin_bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    refused(
        admin_as_officer
            .decide_frame_request(pb::DecideFrameRequestRequest {
                request_id: id.clone(),
                approve: true,
                note: String::new(),
            })
            .await,
        tonic::Code::PermissionDenied,
        "privacy-officer certificate",
    );
    let mut officer_as_admin = client::admin(&url, "localhost", &officer_bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    refused(
        officer_as_admin
            .download_frames(pb::GetFrameRequestRequest {
                request_id: id.clone(),
            })
            .await
            .map(|_| ()),
        tonic::Code::PermissionDenied,
        "cannot call the admin service",
    );
    // Longer than the node's long poll (5 s here), so it has asked for work meanwhile.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let waiting = request_state(&mut admin, &id).await;
    assert_eq!(waiting.state, "pending", "{waiting:?}");
    assert!(!waiting.history.iter().any(|e| e.action == "delivered"));

    // Approved: the node delivers the sealed export.
    let approved = officer
        .decide_frame_request(pb::DecideFrameRequestRequest {
            request_id: id.clone(),
            approve: true,
            note: "ok for ticket 17".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(
        (approved.state.as_str(), approved.decided_by.as_str()),
        ("approved", "olivia")
    );
    let delivered = wait_state(&mut admin, &id, "delivered").await;
    assert_eq!(delivered.frames, 3, "{delivered:?}");
    let export_file = sandbox
        .coordinator_dir
        .join("frame-exports")
        .join(format!("{id}.sealed"));
    assert!(export_file.is_file());

    // Only the requester downloads it, and only their key opens it.
    refused(
        other
            .download_frames(pb::GetFrameRequestRequest {
                request_id: id.clone(),
            })
            .await
            .map(|_| ()),
        tonic::Code::FailedPrecondition,
        "filed by someone else",
    );
    let wrong = keys.path().join("wrong.key");
    frames::keygen(&wrong).unwrap_or_else(|e| panic!("{e:#}"));
    let opened = frames::download(&mut admin, &id, &wrong).await;
    assert!(opened.is_err_and(|e| e.to_string().contains("does not open with this key")));
    let export = frames::download(&mut admin, &id, &secret)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(export.store_id, "store-1");
    let captured: Vec<i64> = export.frames.iter().map(|f| f.captured_unix_ms).collect();
    let expected: Vec<i64> = kept[..3].iter().map(|f| f.captured_unix_ms).collect();
    assert_eq!(
        captured, expected,
        "the export holds exactly the approved window"
    );
    for frame in &export.frames {
        let image = image::load_from_memory(&frame.jpeg)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_rgb8();
        let share = filled_after_jpeg(&image, &face);
        assert!(
            share >= 0.9,
            "an exported frame shows the face ({:.0}% filled)",
            share * 100.0
        );
    }
    // The sealed bytes on the coordinator are not the JPEGs.
    let sealed = std::fs::read(&export_file).unwrap_or_else(|e| panic!("{e}"));
    let piece = &export.frames[0].jpeg[1000..1064];
    assert!(
        !sealed.windows(piece.len()).any(|w| w == piece),
        "the coordinator holds readable frames"
    );

    // A second request never approved; then both expire.
    let never = admin
        .request_frames(ask(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    wait_state(&mut admin, &id, "expired").await;
    let mut expired = request_state(&mut admin, &id).await;
    for _ in 0..100 {
        if expired.history.iter().any(|e| e.action == "export deleted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        expired = request_state(&mut admin, &id).await;
    }
    assert!(!export_file.exists(), "the export outlived its request");
    for action in [
        "requested",
        "approved",
        "delivered",
        "downloaded",
        "expired",
        "export deleted",
    ] {
        assert!(
            expired.history.iter().any(|e| e.action == action),
            "no {action} in {:?}",
            expired.history
        );
    }
    refused(
        admin
            .download_frames(pb::GetFrameRequestRequest {
                request_id: id.clone(),
            })
            .await
            .map(|_| ()),
        tonic::Code::FailedPrecondition,
        "expired",
    );
    wait_state(&mut admin, &never.request_id, "expired").await;
    refused(
        officer
            .decide_frame_request(pb::DecideFrameRequestRequest {
                request_id: never.request_id.clone(),
                approve: true,
                note: String::new(),
            })
            .await,
        tonic::Code::FailedPrecondition,
        "not pending",
    );
    drop(store);
    let coordinator_dir = sandbox.coordinator_dir.clone();
    shutdown(sandbox).await;
    assert!(Path::new(&node_dir).is_dir());

    // Every step is in the audit log too, by whoever took it, and the log verifies.
    let (code, verdict) = crate::audit::verify(&coordinator_dir);
    assert_eq!(code, 0, "{verdict}");
    let log = crate::audit::entries(&coordinator_dir);
    for (action, actor) in [
        ("frames.request", "admin/pilot-admin"),
        ("frames.approve", "privacy-officer/olivia"),
        ("frames.deliver", "node/store-1"),
        ("frames.download", "admin/pilot-admin"),
        ("frames.expire", "coordinator"),
    ] {
        assert!(
            log.iter().any(|e| e["action"] == action
                && e["actor"] == actor
                && e["subject"] == id.as_str()),
            "no {action} of {id} by {actor} in {log:#?}"
        );
    }
}
