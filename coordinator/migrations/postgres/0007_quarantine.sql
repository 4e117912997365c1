-- PostgreSQL twin of ../sqlite/0007_quarantine.sql: same tables, columns and meaning; keep the two in step.
-- Updates that failed a content check after their header was accepted (non-finite values, wrong
-- length, checksum mismatch, norm above the round's limit, protocol violations mid-stream): kept
-- for forensics, never aggregated (they are never in round_updates). A row is written for every
-- such update; the bytes received are kept for the first few per node and round only
-- (blob_path NULL beyond that), so a misbehaving node cannot fill the disk.
CREATE TABLE quarantined_updates (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    round_id          TEXT    NOT NULL REFERENCES rounds (round_id),
    node_id           TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    received_bytes    BIGINT NOT NULL,
    sha256            TEXT    NOT NULL, -- of the bytes received
    blob_path         TEXT,             -- the bytes received, when kept
    received_unix_ms  BIGINT NOT NULL
);

CREATE INDEX quarantined_updates_by_round ON quarantined_updates (round_id, node_id);
