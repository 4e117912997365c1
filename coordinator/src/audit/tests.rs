//! The entry encoding, canonical JSON and the head file format. The chain itself (appends,
//! verification, each kind of tampering) is tested on both databases in
//! [`super::conformance`], run by the storage conformance suite.

use serde_json::json;

use super::*;

#[test]
fn the_entry_hash_is_sha256_over_length_prefixed_fields() {
    // Computed independently (Python hashlib, struct.pack(">Q"/">q")) from the documented
    // encoding: a change to it breaks every stored chain, so it must be deliberate.
    let hash = hash_fields(
        1,
        1_700_000_000_000,
        "admin/alice",
        "round.start",
        "r-1",
        r#"{"a":1,"b":[true,null]}"#,
        GENESIS,
    );
    assert_eq!(
        hash,
        "1be7085d92a698e5af9bfbd31ef6556a7fd9436e1d03f27f205a4b6f8b76661f"
    );
}

#[test]
fn fields_cannot_be_shifted_into_each_other() {
    let a = hash_fields(1, 0, "admin/al", "ice", "s", "{}", GENESIS);
    let b = hash_fields(1, 0, "admin/alice", "", "s", "{}", GENESIS);
    assert_ne!(a, b);
    let c = hash_fields(2, 0, "admin/alice", "", "s", "{}", GENESIS);
    assert_ne!(b, c);
}

#[test]
fn canonical_json_sorts_keys_at_every_depth_and_drops_whitespace() {
    let one = json!({"b": 1, "a": {"z": [3, {"y": true, "x": null}], "c": "é\"q"}});
    let mut two = serde_json::Map::new();
    two.insert(
        "a".into(),
        json!({"c": "é\"q", "z": [3, {"x": null, "y": true}]}),
    );
    two.insert("b".into(), json!(1));
    let text = canonical_json(&one);
    assert_eq!(text, canonical_json(&Value::Object(two)));
    assert_eq!(
        text,
        r#"{"a":{"c":"é\"q","z":[3,{"x":null,"y":true}]},"b":1}"#
    );
    let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, one);
}

#[test]
fn head_files_round_trip_and_garbage_is_refused() {
    let head = Head {
        seq: 42,
        hash: "ab".repeat(32),
    };
    assert_eq!(Head::parse(&head.to_text()), Some(head));
    for bad in [
        "",
        "42",
        "x abab",
        &format!("42 {}", "zz".repeat(32)),
        "42 abcd",
    ] {
        assert_eq!(Head::parse(bad), None, "{bad:?}");
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join(HEAD_FILE);
    assert_eq!(read_head(&path).ok(), Some(None));
    std::fs::write(&path, "not a head").unwrap_or_else(|e| panic!("{e}"));
    assert!(read_head(&path).is_err());
}

#[test]
fn an_actor_is_role_and_name() {
    let peer = Peer {
        role: crate::identity::Role::MlEngineer,
        name: "bob".into(),
    };
    assert_eq!(actor(&peer), "ml-engineer/bob");
}
