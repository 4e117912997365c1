-- The encrypted local store (src/local_store.rs). Every processed (redacted) frame leaves one
-- row: its camera and capture time in the clear (to find rows for retention, deletion requests
-- and data requests), everything derived from its pixels (slot states, faces filled) sealed
-- with the node's key. A kept frame image lives in an encrypted file named by `image_file`.
CREATE TABLE frames (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    camera_id        INTEGER NOT NULL,
    captured_unix_ms INTEGER NOT NULL,
    stored_unix_ms   INTEGER NOT NULL, -- node clock; the retention window counts from here
    event            BLOB    NOT NULL, -- sealed JSON {slot_states, faces_redacted}
    image_file       TEXT              -- relative to <data_dir>/frames; NULL when not kept
);

CREATE INDEX frames_by_capture ON frames (camera_id, captured_unix_ms);
CREATE INDEX frames_by_storage ON frames (stored_unix_ms);

-- What was deleted, when and why: retention sweeps that removed something, and deletion
-- requests (whether or not they matched anything). Never deleted itself.
CREATE TABLE deletions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT    NOT NULL CHECK (kind IN ('retention', 'request')),
    requested_by     TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    camera_id        INTEGER,          -- NULL: every camera
    from_unix_ms     INTEGER NOT NULL, -- capture time (request) or storage time (retention)
    to_unix_ms       INTEGER NOT NULL, -- exclusive
    frames_deleted   INTEGER NOT NULL,
    images_deleted   INTEGER NOT NULL,
    done_unix_ms     INTEGER NOT NULL
);
