-- Tables of other tools adopted in place (`outbox-relay adopt`): triggers
-- copy their inserted rows into outbox_messages. One row per adopted table,
-- for `status` and `adopt --undo`.
CREATE TABLE outbox_adopted (
    table_name     TEXT   PRIMARY KEY,
    shape          TEXT   NOT NULL,          -- spakky | debezium
    mapping        TEXT   NOT NULL,          -- what each column becomes
    adopted_at_ms  BIGINT NOT NULL
);
