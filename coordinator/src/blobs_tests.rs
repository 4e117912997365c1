use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Put, get, idempotent put, named blobs, deletion: the same on every kind of store.
async fn store_behaves(store: &BlobStore) {
    let bytes: Vec<u8> = (0..10_000u32).flat_map(|v| v.to_le_bytes()).collect();
    let reference = ok(store.put(bytes.clone()).await);
    assert!(is_reference(&reference), "{reference}");
    assert_eq!(
        reference,
        format!("sha256:{}", backroom_models::manifest::sha256_hex(&bytes))
    );
    assert_eq!(ok(store.get(&reference).await), bytes);
    // The same bytes again: the same reference.
    assert_eq!(ok(store.put(bytes.clone()).await), reference);
    // Other bytes: another.
    let other = ok(store.put(b"other".to_vec()).await);
    assert_ne!(other, reference);
    assert_eq!(ok(store.get(&other).await), b"other");

    let missing = format!("sha256:{}", "0".repeat(64));
    let error = store.get(&missing).await.err().map(|e| e.to_string());
    assert!(
        error.as_deref().is_some_and(|e| e.contains("missing")),
        "{error:?}"
    );

    assert_eq!(ok(store.get_named("moments/x/v1-m").await), None);
    ok(store.put_named("moments/x/v1-m", b"first".to_vec()).await);
    ok(store.put_named("moments/x/v1-m", b"second".to_vec()).await);
    assert_eq!(
        ok(store.get_named("moments/x/v1-m").await).as_deref(),
        Some(&b"second"[..])
    );

    ok(store.delete(&other).await);
    assert!(store.get(&other).await.is_err());
    // Absent is not an error.
    ok(store.delete(&other).await);
}

#[test]
fn a_local_store_keeps_blobs_by_content_and_detects_changes_at_rest() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    runtime().block_on(async {
        let store = ok(BlobStore::open(None, &dir.path().join("blobs"), &[]));
        store_behaves(&store).await;

        let reference = ok(store.put(b"weights".to_vec()).await);
        let hex = reference.trim_start_matches(REFERENCE_PREFIX);
        let path = local_blob_path(&dir.path().join("blobs"), hex);
        assert_eq!(
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            b"weights"
        );
        // Changed on disk: refused, naming what happened.
        std::fs::write(&path, b"weightz").unwrap_or_else(|e| panic!("{e}"));
        let error = store.get(&reference).await.err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("changed at rest")),
            "{error:?}"
        );

        // A row from before the blob store: a file path.
        let legacy = dir.path().join("v1.safetensors");
        std::fs::write(&legacy, b"legacy").unwrap_or_else(|e| panic!("{e}"));
        let legacy = legacy.display().to_string();
        assert!(!is_reference(&legacy));
        assert_eq!(ok(store.get(&legacy).await), b"legacy");

        // The same directory as a file:// URL.
        let url = format!("file://{}", dir.path().join("blobs").display());
        let again = ok(BlobStore::open(Some(&url), Path::new("/unused"), &[]));
        assert_eq!(ok(again.get(&legacy).await), b"legacy");
        assert_eq!(
            ok(again.get_named("moments/x/v1-m").await).as_deref(),
            Some(&b"second"[..])
        );
    });
}

#[test]
fn blocking_calls_work_from_a_blocking_thread() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rt = runtime();
    let got = rt.block_on(async {
        let store = ok(BlobStore::open(None, dir.path(), &[]));
        tokio::task::spawn_blocking(move || {
            let reference = store.put_blocking(b"abc".to_vec())?;
            store.put_named_blocking("named", b"n".to_vec())?;
            assert_eq!(
                store.get_named_blocking("named")?.as_deref(),
                Some(&b"n"[..])
            );
            store.get_blocking(&reference)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    });
    assert_eq!(ok(got), b"abc");
}

#[test]
fn bad_store_urls_and_options_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let message = |r: Result<BlobStore>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message(BlobStore::open(Some("ftp://host/x"), dir.path(), &[])).contains("only s3://"));
    assert!(message(BlobStore::open(Some("file://relative"), dir.path(), &[])).contains("file"));
    assert!(message(BlobStore::open(Some("s3://"), dir.path(), &[])).contains("bucket"));
    let options = vec![("endpoint".to_owned(), "http://127.0.0.1:9".to_owned())];
    assert!(message(BlobStore::open(None, dir.path(), &options)).contains("s3:// blob store only"));
    let bad = vec![("no_such_option".to_owned(), "1".to_owned())];
    assert!(message(BlobStore::open(Some("s3://b"), dir.path(), &bad)).contains("no_such_option"));
    // Outside a runtime: refused, not a panic later.
    assert!(message(BlobStore::open(None, dir.path(), &[])).contains("Tokio runtime"));
    assert!(!is_reference("sha256:abc"));
    assert!(!is_reference(&format!("sha256:{}", "G".repeat(64))));
}

/// The same behaviour on an S3-compatible server: `BACKROOM_TEST_S3_ENDPOINT` names one with a
/// bucket `backroom-test` (`.ci/run` starts moto's server for it). Required when
/// `BACKROOM_REQUIRE_S3=1`; skipped, saying so, otherwise.
#[test]
fn an_s3_store_behaves_like_a_local_one() {
    let Ok(endpoint) = std::env::var("BACKROOM_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("BACKROOM_REQUIRE_S3").as_deref() != Ok("1"),
            "BACKROOM_REQUIRE_S3=1 but BACKROOM_TEST_S3_ENDPOINT is not set"
        );
        eprintln!("skipped: no S3 server (set BACKROOM_TEST_S3_ENDPOINT)");
        return;
    };
    let options: Vec<(String, String)> = [
        ("endpoint", endpoint.as_str()),
        ("allow_http", "true"),
        ("region", "us-east-1"),
        ("access_key_id", "backroom-test"),
        ("secret_access_key", "backroom-test"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let prefix = format!("run-{:016x}", rand::random::<u64>());
    runtime().block_on(async {
        let store = ok(BlobStore::open(
            Some(&format!("s3://backroom-test/{prefix}")),
            Path::new("/unused"),
            &options,
        ));
        assert!(store.local_dir().is_none());
        store_behaves(&store).await;
    });
}
