-- Raw window counts never persist: the queue of raw windows is replaced by a queue of noised
-- releases (see src/release.rs), and a ledger of the zCDP budget spent per UTC day.
DROP INDEX IF EXISTS metric_queue_unsynced;
DROP TABLE IF EXISTS metric_queue;

-- Noised releases waiting to be sent (synced_at IS NULL) or acknowledged by the coordinator. The
-- idempotency key makes releasing a window twice, and sending it twice, no-ops.
CREATE TABLE metric_releases (
    idempotency_key   TEXT    PRIMARY KEY NOT NULL,
    camera_id         INTEGER NOT NULL,
    window_start_unix INTEGER NOT NULL,
    window_secs       INTEGER NOT NULL,
    slots_per_frame   INTEGER NOT NULL,
    seconds_per_frame INTEGER NOT NULL,
    rho               REAL    NOT NULL, -- zCDP cost charged to the ledger
    metrics           TEXT    NOT NULL, -- JSON array of noised metrics (never a raw count)
    created_at        INTEGER NOT NULL, -- unix ms
    synced_at         INTEGER           -- unix ms; NULL until acknowledged
);

CREATE INDEX metric_releases_unsynced ON metric_releases (window_start_unix)
    WHERE synced_at IS NULL;

-- Windows refused because their day's budget was spent: dropped, never sent. Remembered so a
-- replay of the same window after a restart is neither released nor counted again.
CREATE TABLE metric_refusals (
    idempotency_key   TEXT    PRIMARY KEY NOT NULL,
    window_start_unix INTEGER NOT NULL,
    rho               REAL    NOT NULL, -- the cost the release would have had
    refused_at        INTEGER NOT NULL  -- unix ms
);

-- zCDP budget per UTC day (day = floor(unix / 86400)) of the windows' data. A window that
-- overlaps several days is charged to each of them.
CREATE TABLE privacy_ledger (
    day        INTEGER PRIMARY KEY NOT NULL,
    rho_spent  REAL    NOT NULL,
    rho_budget REAL    NOT NULL, -- the day budget in force at the last charge or refusal
    releases   INTEGER NOT NULL,
    refused    INTEGER NOT NULL
);
