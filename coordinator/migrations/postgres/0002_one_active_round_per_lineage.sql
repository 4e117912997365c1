-- PostgreSQL twin of ../sqlite/0002_one_active_round_per_lineage.sql: same tables, columns and meaning; keep the two in step.
-- At most one unfinished round per lineage, so two concurrent StartRound calls can never both
-- run (and write the same next version).
CREATE UNIQUE INDEX rounds_one_active_per_lineage ON rounds (lineage)
    WHERE state NOT IN ('published', 'failed', 'cancelled');
