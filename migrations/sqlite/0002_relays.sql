-- Live relay processes; partitions are shared out among them.
CREATE TABLE outbox_relays (
    owner          TEXT    PRIMARY KEY,
    heartbeat_ms   INTEGER NOT NULL,
    started_at_ms  INTEGER NOT NULL
);
