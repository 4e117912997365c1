-- Closed shelf-metric windows waiting to be sent (synced_at IS NULL) or already acknowledged by
-- the coordinator. The idempotency key makes closing a window twice, and sending it twice, no-ops.
CREATE TABLE metric_queue (
    idempotency_key         TEXT    PRIMARY KEY NOT NULL,
    camera_id               INTEGER NOT NULL,
    window_start_unix       INTEGER NOT NULL,
    window_secs             INTEGER NOT NULL,
    frames                  INTEGER NOT NULL,
    slot_observations       INTEGER NOT NULL,
    empty_slot_observations INTEGER NOT NULL,
    out_of_stock_events     INTEGER NOT NULL,
    created_at              INTEGER NOT NULL, -- unix ms
    synced_at               INTEGER           -- unix ms; NULL until acknowledged
);

CREATE INDEX metric_queue_unsynced ON metric_queue (window_start_unix) WHERE synced_at IS NULL;
