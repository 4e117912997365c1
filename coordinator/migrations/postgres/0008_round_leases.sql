-- Coordinator replicas on one database. A round is driven by the replica holding its lease,
-- renewed while it drives; a lease that expired (its holder died or stopped) is taken over by
-- another replica, which resumes the round from its last durable state.
CREATE TABLE round_leases (
    round_id         TEXT    PRIMARY KEY REFERENCES rounds (round_id),
    owner            TEXT    NOT NULL,
    expires_unix_ms  BIGINT  NOT NULL
);

-- Bumped by a replica whose change can alter what long polls and round watchers see (a round's
-- state, a publication, a promotion, a frame request decision); every replica follows it and
-- wakes its own polls.
CREATE TABLE change_feed (
    id          BIGINT  PRIMARY KEY CHECK (id = 1),
    generation  BIGINT  NOT NULL
);
INSERT INTO change_feed (id, generation) VALUES (1, 0);
