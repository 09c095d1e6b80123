-- outbox-relay schema for SQLite. See docs/producers.md for the producer contract.

-- The append-only log. rowid order is commit order on SQLite (writes are serialised).
CREATE TABLE outbox_messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,             -- UUIDv7, text form
    event_name     TEXT    NOT NULL,
    partition_key  TEXT,
    partition      INTEGER NOT NULL DEFAULT 0,          -- FNV-1a(key or id) % partitions
    payload        BLOB    NOT NULL,
    headers        TEXT    NOT NULL DEFAULT '{}',       -- JSON object of strings
    created_at_ms  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE INDEX outbox_messages_partition_seq ON outbox_messages (partition, seq);

-- Settings fixed when the outbox is created (the partition count).
CREATE TABLE outbox_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One cursor per (target, partition): how far the target has read, and who holds it.
CREATE TABLE outbox_cursors (
    target            TEXT    NOT NULL,
    partition         INTEGER NOT NULL,
    position          INTEGER NOT NULL DEFAULT 0,       -- seq of the last message passed
    lease_owner       TEXT,
    lease_expires_ms  INTEGER NOT NULL DEFAULT 0,
    updated_at_ms     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (target, partition)
);

-- Messages that failed at a target: waiting for a retry, or dead.
CREATE TABLE outbox_deliveries (
    target            TEXT    NOT NULL,
    seq               INTEGER NOT NULL,
    message_id        TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('retry', 'dead')),
    attempts          INTEGER NOT NULL,
    next_attempt_ms   INTEGER NOT NULL,
    last_error        TEXT    NOT NULL,
    history           TEXT    NOT NULL DEFAULT '[]',    -- JSON array of {attempt, at_ms, error}
    claim_owner       TEXT,
    claim_expires_ms  INTEGER NOT NULL DEFAULT 0,
    updated_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (target, seq)
);
CREATE INDEX outbox_deliveries_due ON outbox_deliveries (target, state, next_attempt_ms);
