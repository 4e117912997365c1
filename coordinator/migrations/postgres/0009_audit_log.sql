-- PostgreSQL twin of ../sqlite/0009_audit_log.sql: same tables, columns and meaning; keep the two in step.
-- The audit log (coordinator/src/audit.rs): an append-only, hash-chained record of enrolments,
-- key changes, rounds, publications, rollouts, metric queries and frame requests. Entry `seq`
-- (1, 2, 3, ... without gaps) records `hash` = SHA-256 over its fields and `prev_hash` (the
-- hash of entry seq - 1; 64 zeros for entry 1); `details` is canonical JSON (sorted keys, no
-- spaces). The newest (seq, hash) is also kept outside the database, in <data_dir>/audit.head,
-- so deleting the last entries is detected too. `backroom audit verify` checks all of it.
-- Appends are serialised by the write transactions' advisory lock.
CREATE TABLE audit_log (
    seq           BIGINT  PRIMARY KEY,
    time_unix_ms  BIGINT  NOT NULL,
    actor         TEXT    NOT NULL, -- role/name of the certificate, cli/<user>, or coordinator
    action        TEXT    NOT NULL, -- enrol, round.start, metrics.query, frames.approve, ...
    subject       TEXT    NOT NULL,
    details       TEXT    NOT NULL,
    prev_hash     TEXT    NOT NULL,
    hash          TEXT    NOT NULL
);

-- Append-only: the coordinator never updates or deletes an entry, and this refuses anyone who
-- tries without first dropping it (which the hash chain and the head file then catch).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
