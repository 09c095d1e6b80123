-- outbox-relay schema for PostgreSQL (13+). See docs/producers.md for the producer contract.

-- Settings fixed when the outbox is created (the partition count).
CREATE TABLE outbox_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The append-only log. The relay reads rows in (xact_id, seq) order, and only
-- rows below pg_snapshot_xmin(pg_current_snapshot()), so a transaction that
-- commits late is read after the ones that committed before it was visible,
-- never skipped.
CREATE TABLE outbox_messages (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             UUID    NOT NULL UNIQUE,
    event_name     TEXT    NOT NULL,
    partition_key  TEXT,
    partition      INTEGER NOT NULL DEFAULT 0,          -- assigned by a trigger
    payload        BYTEA   NOT NULL,
    headers        JSONB   NOT NULL DEFAULT '{}',       -- object of strings
    created_at_ms  BIGINT  NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    xact_id        XID8    NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX outbox_messages_read ON outbox_messages (partition, xact_id, seq);

-- FNV-1a (32 bit) of the UTF-8 bytes: the same partition function as the Rust producer.
CREATE FUNCTION outbox_fnv1a(input TEXT) RETURNS BIGINT
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    h BIGINT := 2166136261;
    b BYTEA := convert_to(input, 'UTF8');
BEGIN
    FOR i IN 0 .. length(b) - 1 LOOP
        h := ((h # get_byte(b, i)) * 16777619) & 4294967295;
    END LOOP;
    RETURN h;
END $$;

CREATE FUNCTION outbox_assign_partition() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
DECLARE
    n INTEGER;
BEGIN
    SELECT value::INTEGER INTO n FROM outbox_settings WHERE key = 'partitions';
    IF n IS NULL OR n <= 1 THEN
        NEW.partition := 0;
    ELSE
        NEW.partition := outbox_fnv1a(coalesce(NEW.partition_key, NEW.id::TEXT)) % n;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_messages_partition
    BEFORE INSERT ON outbox_messages
    FOR EACH ROW EXECUTE FUNCTION outbox_assign_partition();

-- Wake the relays once per inserting statement; NOTIFY folds duplicates
-- within a transaction, so a transaction wakes them once.
CREATE FUNCTION outbox_notify() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_relay', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_messages_notify
    AFTER INSERT ON outbox_messages
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- One cursor per (target, partition): how far the target has read, and who holds it.
CREATE TABLE outbox_cursors (
    target            TEXT    NOT NULL,
    partition         INTEGER NOT NULL,
    position_xid      BIGINT  NOT NULL DEFAULT 0,
    position_seq      BIGINT  NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_ms  BIGINT  NOT NULL DEFAULT 0,
    updated_at_ms     BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (target, partition)
);

-- Messages that failed at a target: waiting for a retry, or dead.
CREATE TABLE outbox_deliveries (
    target            TEXT    NOT NULL,
    seq               BIGINT  NOT NULL,
    message_id        TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('retry', 'dead')),
    attempts          INTEGER NOT NULL,
    next_attempt_ms   BIGINT  NOT NULL,
    last_error        TEXT    NOT NULL,
    history           JSONB   NOT NULL DEFAULT '[]',
    claim_owner       TEXT,
    claim_expires_ms  BIGINT  NOT NULL DEFAULT 0,
    updated_at_ms     BIGINT  NOT NULL,
    PRIMARY KEY (target, seq)
);
CREATE INDEX outbox_deliveries_due ON outbox_deliveries (target, state, next_attempt_ms);

-- Live relay processes; partitions are shared out among them.
CREATE TABLE outbox_relays (
    owner          TEXT   PRIMARY KEY,
    heartbeat_ms   BIGINT NOT NULL,
    started_at_ms  BIGINT NOT NULL
);
