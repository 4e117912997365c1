-- The audit log (coordinator/src/audit.rs): an append-only, hash-chained record of enrolments,
-- key changes, rounds, publications, rollouts, metric queries and frame requests. Entry `seq`
-- (1, 2, 3, ... without gaps) records `hash` = SHA-256 over its fields and `prev_hash` (the
-- hash of entry seq - 1; 64 zeros for entry 1); `details` is canonical JSON (sorted keys, no
-- spaces). The newest (seq, hash) is also kept outside the database, in <data_dir>/audit.head,
-- so deleting the last entries is detected too. `backroom audit verify` checks all of it.
CREATE TABLE audit_log (
    seq           INTEGER PRIMARY KEY,
    time_unix_ms  INTEGER NOT NULL,
    actor         TEXT    NOT NULL, -- role/name of the certificate, cli/<user>, or coordinator
    action        TEXT    NOT NULL, -- enrol, round.start, metrics.query, frames.approve, ...
    subject       TEXT    NOT NULL,
    details       TEXT    NOT NULL,
    prev_hash     TEXT    NOT NULL,
    hash          TEXT    NOT NULL
);

-- Append-only: the coordinator never updates or deletes an entry, and these refuse anyone who
-- tries without first dropping them (which the hash chain and the head file then catch).
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
