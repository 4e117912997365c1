-- Privacy accounting (issue 3).
--
-- A round's Poisson sampling rate and the expected number of contributors (the fixed
-- denominator of DP-FedAvg) are chosen when the round starts and never change afterwards.
ALTER TABLE rounds ADD COLUMN sampling_rate REAL NOT NULL DEFAULT 1.0;
ALTER TABLE rounds ADD COLUMN expected_clients REAL NOT NULL DEFAULT 0.0;
-- Rounds in flight at the upgrade keep the denominator they were started with (their target).
UPDATE rounds SET expected_clients = COALESCE(json_extract(spec, '$.target_clients'), 1.0)
WHERE state NOT IN ('published', 'failed', 'cancelled');

-- Each lineage's budget: (epsilon_max, delta). epsilon_max NULL means "no budget" (non-private
-- lineages, e.g. tests without noise); the accountant still records every round.
CREATE TABLE privacy_budgets (
    lineage         TEXT    PRIMARY KEY NOT NULL,
    epsilon_max     REAL,
    delta           REAL    NOT NULL,
    updated_unix_ms INTEGER NOT NULL
);

-- One row per round that was allowed to start. `reserved` while it runs; `spent` once it
-- published (or ended after accepting at least one update); `refunded` when it ended without
-- ever accepting an update, so nothing derived from private data was computed.
CREATE TABLE privacy_ledger (
    round_id         TEXT    PRIMARY KEY NOT NULL REFERENCES rounds (round_id),
    lineage          TEXT    NOT NULL,
    sampling_rate    REAL    NOT NULL,
    noise_multiplier REAL    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('reserved', 'spent', 'refunded')),
    -- The lineage's epsilon including this round, at the budget's delta, as computed when the
    -- round was admitted (NULL when it is infinite: no noise).
    epsilon_after    REAL,
    created_unix_ms  INTEGER NOT NULL,
    updated_unix_ms  INTEGER NOT NULL
);
CREATE INDEX privacy_ledger_by_lineage ON privacy_ledger (lineage, created_unix_ms);

-- Rounds from before the ledger existed are charged too, conservatively at q = 1 (their
-- sampling was not Poisson): published or unfinished ones, and ended ones that accepted an
-- update. Their noise multiplier comes from the stored spec.
INSERT INTO privacy_ledger (round_id, lineage, sampling_rate, noise_multiplier, status,
                            epsilon_after, created_unix_ms, updated_unix_ms)
SELECT r.round_id, r.lineage, 1.0, json_extract(r.spec, '$.noise_multiplier'),
       CASE WHEN r.state IN ('published', 'failed', 'cancelled') THEN 'spent' ELSE 'reserved' END,
       NULL, r.created_unix_ms, r.updated_unix_ms
FROM rounds r
WHERE r.state NOT IN ('failed', 'cancelled')
   OR EXISTS (SELECT 1 FROM round_updates u WHERE u.round_id = r.round_id);

-- Adaptive clipping (Andrew et al., 2021): whether the node's delta was within the round's clip
-- norm before clipping (the bit the clip norm is adapted from; only its noised sum is used).
ALTER TABLE round_updates ADD COLUMN within_clip INTEGER NOT NULL DEFAULT 1;

-- The clip norm the next adaptive round of a lineage uses, updated when a round publishes.
CREATE TABLE adaptive_clip_norms (
    lineage         TEXT    PRIMARY KEY NOT NULL,
    clip_norm       REAL    NOT NULL,
    round_id        TEXT    NOT NULL,
    updated_unix_ms INTEGER NOT NULL
);
