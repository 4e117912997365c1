-- PostgreSQL twin of ../sqlite/0006_model_channels.sql: same tables, columns and meaning; keep the two in step.
-- Rollout channels per lineage, and who published versions made outside rounds (rollbacks).

CREATE TABLE model_channels (
    lineage TEXT NOT NULL,
    channel TEXT NOT NULL CHECK (channel IN ('stable', 'canary')),
    version BIGINT NOT NULL,
    -- Share of stores the channel reaches: 100 for stable, 1..100 for canary.
    percent BIGINT NOT NULL CHECK (percent BETWEEN 1 AND 100),
    updated_by TEXT NOT NULL,
    updated_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (lineage, channel)
);

ALTER TABLE model_versions ADD COLUMN published_by TEXT NOT NULL DEFAULT '';

-- Existing lineages keep what they had before channels: every store runs the newest version.
INSERT INTO model_channels (lineage, channel, version, percent, updated_by, updated_unix_ms)
SELECT lineage, 'stable', MAX(version), 100, 'migration', 0 FROM model_versions GROUP BY lineage;
