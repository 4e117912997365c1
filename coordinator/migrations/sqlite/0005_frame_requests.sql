-- Audited requests for a window of one store's redacted frames (src/frame_requests.rs).
-- States: pending -> approved | denied | expired; approved -> delivered | expired;
-- delivered -> expired (the sealed export is deleted then).
CREATE TABLE frame_requests (
    request_id       TEXT    PRIMARY KEY NOT NULL,
    store_id         TEXT    NOT NULL,
    camera_id        INTEGER,          -- NULL: every camera
    from_unix_ms     INTEGER NOT NULL,
    to_unix_ms       INTEGER NOT NULL, -- exclusive
    reason           TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL, -- admin certificate name
    recipient_key    BLOB    NOT NULL, -- X25519 public key the export is sealed to
    state            TEXT    NOT NULL CHECK (state IN
                         ('pending', 'approved', 'denied', 'delivered', 'expired')),
    decided_by       TEXT    NOT NULL DEFAULT '', -- privacy-officer certificate name
    created_unix_ms  INTEGER NOT NULL,
    expires_unix_ms  INTEGER NOT NULL,
    exported_frames  INTEGER NOT NULL DEFAULT 0,
    export_bytes     INTEGER NOT NULL DEFAULT 0,
    export_path      TEXT              -- the sealed export while it exists
);

CREATE INDEX frame_requests_by_store ON frame_requests (store_id, state);

-- Append-only trail of every step of every request.
CREATE TABLE frame_request_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT    NOT NULL REFERENCES frame_requests (request_id),
    at_unix_ms  INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    detail      TEXT    NOT NULL
);

CREATE INDEX frame_request_events_by_request ON frame_request_events (request_id, id);
