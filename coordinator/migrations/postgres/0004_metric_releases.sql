-- PostgreSQL twin of ../sqlite/0004_metric_releases.sql: same tables, columns and meaning; keep the two in step.
-- Stores send noised releases of their metric windows, never raw counts: the table of raw
-- counts goes, and releases are kept with their noise parameters (one row per metric).
DROP INDEX IF EXISTS metric_batches_by_window;
DROP TABLE IF EXISTS metric_batches;

CREATE TABLE metric_releases (
    store_id          TEXT    NOT NULL,
    idempotency_key   TEXT    NOT NULL,
    camera_id         BIGINT NOT NULL,
    window_start_unix BIGINT NOT NULL,
    window_secs       BIGINT NOT NULL,
    slots_per_frame   BIGINT NOT NULL,
    seconds_per_frame BIGINT NOT NULL,
    rho               DOUBLE PRECISION    NOT NULL, -- zCDP cost the store charged for this release
    received_unix_ms  BIGINT NOT NULL,
    PRIMARY KEY (store_id, idempotency_key)
);
CREATE INDEX metric_releases_by_window ON metric_releases (window_start_unix);

CREATE TABLE metric_release_values (
    store_id        TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    value           DOUBLE PRECISION,             -- noised; NULL when suppressed
    suppressed      BIGINT NOT NULL, -- 0 or 1
    noise_scale     DOUBLE PRECISION    NOT NULL,
    sensitivity     DOUBLE PRECISION    NOT NULL,
    PRIMARY KEY (store_id, idempotency_key, name),
    FOREIGN KEY (store_id, idempotency_key)
        REFERENCES metric_releases (store_id, idempotency_key) ON DELETE CASCADE
);
