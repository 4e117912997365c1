-- Updates that failed a content check after their header was accepted (non-finite values, wrong
-- length, checksum mismatch, norm above the round's limit, protocol violations mid-stream): kept
-- for forensics, never aggregated (they are never in round_updates). A row is written for every
-- such update; the bytes received are kept for the first few per node and round only
-- (blob_path NULL beyond that), so a misbehaving node cannot fill the disk.
CREATE TABLE quarantined_updates (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id          TEXT    NOT NULL REFERENCES rounds (round_id),
    node_id           TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    received_bytes    INTEGER NOT NULL,
    sha256            TEXT    NOT NULL, -- of the bytes received
    blob_path         TEXT,             -- the bytes received, when kept
    received_unix_ms  INTEGER NOT NULL
);

CREATE INDEX quarantined_updates_by_round ON quarantined_updates (round_id, node_id);
