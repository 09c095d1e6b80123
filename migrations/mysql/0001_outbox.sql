-- outbox-relay schema for MySQL 8.0+ and MariaDB 10.6+. See docs/producers.md
-- for the producer contract and host/src/storage/mysql.rs for how the relay
-- orders the log. No triggers or stored functions: a producer needs INSERT on
-- outbox_messages, nothing else.

-- Settings fixed when the outbox is created (the partition count), and the
-- last commit sequence number handed out (`commit_seq`).
CREATE TABLE outbox_settings (
    `key`  VARCHAR(64) NOT NULL PRIMARY KEY,
    value  TEXT        NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT INTO outbox_settings (`key`, value) VALUES ('commit_seq', '0');

-- The append-only log. AUTO_INCREMENT values are handed out at insert, not at
-- commit, so `seq` is not commit order. The relay gives each row, once it is
-- committed, a `commit_seq` that is higher than every one handed out before,
-- and its `partition`; it reads in (`partition`, `commit_seq`) order. A row
-- with `partition` -1 has not been seen committed yet.
CREATE TABLE outbox_messages (
    seq            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id             VARCHAR(36)  CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    event_name     TEXT         NOT NULL,
    partition_key  TEXT         NULL,
    payload        LONGBLOB     NOT NULL,
    headers        LONGTEXT     NOT NULL DEFAULT ('{}'),
    created_at_ms  BIGINT       NOT NULL DEFAULT (FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000)),
    -- The relay's two columns. Not NULL, so giving them their values is an
    -- in-place update of the row (a NULL made a value grows the record).
    `partition`    INT          NOT NULL DEFAULT -1,  -- FNV-1a(key or id) % partitions; -1: not sequenced yet
    commit_seq     BIGINT       NOT NULL DEFAULT 0,   -- commit order; 0: not sequenced yet
    UNIQUE KEY outbox_messages_id (id),
    KEY outbox_messages_read (`partition`, commit_seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One cursor per (target, partition): how far the target has read, and who holds it.
CREATE TABLE outbox_cursors (
    target            VARCHAR(255) NOT NULL,
    `partition`       INT          NOT NULL,
    position_xid      BIGINT       NOT NULL DEFAULT 0,  -- commit_seq of the last message passed
    position_seq      BIGINT       NOT NULL DEFAULT 0,  -- its seq
    lease_owner       VARCHAR(255) NULL,
    lease_expires_ms  BIGINT       NOT NULL DEFAULT 0,
    updated_at_ms     BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (target, `partition`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Messages that failed at a target: waiting for a retry, or dead.
CREATE TABLE outbox_deliveries (
    target            VARCHAR(255) NOT NULL,
    seq               BIGINT       NOT NULL,
    message_id        TEXT         NOT NULL,
    state             VARCHAR(8)   NOT NULL CHECK (state IN ('retry', 'dead')),
    attempts          INT          NOT NULL,
    next_attempt_ms   BIGINT       NOT NULL,
    last_error        LONGTEXT     NOT NULL,
    history           LONGTEXT     NOT NULL DEFAULT ('[]'),  -- JSON array of {attempt, at_ms, error}
    claim_owner       VARCHAR(255) NULL,
    claim_expires_ms  BIGINT       NOT NULL DEFAULT 0,
    updated_at_ms     BIGINT       NOT NULL,
    PRIMARY KEY (target, seq),
    KEY outbox_deliveries_due (target, state, next_attempt_ms),
    KEY outbox_deliveries_dead (state, updated_at_ms),
    KEY outbox_deliveries_seq (seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Live relay processes; partitions are shared out among them.
CREATE TABLE outbox_relays (
    owner          VARCHAR(255) NOT NULL PRIMARY KEY,
    heartbeat_ms   BIGINT       NOT NULL,
    started_at_ms  BIGINT       NOT NULL,
    expires_ms     BIGINT       NOT NULL DEFAULT 0,
    targets        LONGTEXT     NOT NULL DEFAULT ('[]')   -- JSON: what it serves, with state
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Every target a relay has served: retention waits for each of them.
CREATE TABLE outbox_targets (
    name              VARCHAR(255) NOT NULL PRIMARY KEY,
    registered_at_ms  BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
