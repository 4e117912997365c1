-- Backroom coordinator schema, version 1 (SQLite).

CREATE TABLE model_versions (
    lineage TEXT NOT NULL,
    version INTEGER NOT NULL,
    parent_version INTEGER NOT NULL,
    round_id TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    weights_path TEXT NOT NULL,
    manifest BLOB NOT NULL,
    signature BLOB NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (lineage, version)
);

CREATE TABLE rounds (
    round_id TEXT PRIMARY KEY,
    lineage TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    published_version INTEGER NOT NULL DEFAULT 0,
    failure_reason TEXT NOT NULL DEFAULT '',
    started_by TEXT NOT NULL,
    training_deadline_unix_ms INTEGER NOT NULL DEFAULT 0,
    updates_refused INTEGER NOT NULL DEFAULT 0,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL
);
CREATE INDEX rounds_by_lineage ON rounds (lineage, created_unix_ms);

CREATE TABLE round_participants (
    round_id TEXT NOT NULL REFERENCES rounds (round_id),
    node_id TEXT NOT NULL,
    PRIMARY KEY (round_id, node_id)
);

CREATE TABLE round_updates (
    round_id TEXT NOT NULL REFERENCES rounds (round_id),
    node_id TEXT NOT NULL,
    num_examples INTEGER NOT NULL,
    norm REAL NOT NULL,
    sha256 TEXT NOT NULL,
    blob_path TEXT NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (round_id, node_id)
);

CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    first_seen_unix_ms INTEGER NOT NULL,
    last_seen_unix_ms INTEGER NOT NULL,
    lineage TEXT NOT NULL DEFAULT '',
    installed_version INTEGER NOT NULL DEFAULT 0,
    backend TEXT NOT NULL DEFAULT ''
);

CREATE TABLE metric_batches (
    store_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    camera_id INTEGER NOT NULL,
    window_start_unix INTEGER NOT NULL,
    window_secs INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    slot_observations INTEGER NOT NULL,
    empty_slot_observations INTEGER NOT NULL,
    out_of_stock_events INTEGER NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (store_id, idempotency_key)
);
CREATE INDEX metric_batches_by_window ON metric_batches (window_start_unix);
