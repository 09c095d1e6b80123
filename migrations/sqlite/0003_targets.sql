-- The target registry: every target a relay has served. Retention keeps a
-- message until every registered target has passed it; a target leaves only
-- through `outbox-relay targets forget NAME`.
CREATE TABLE outbox_targets (
    name              TEXT    PRIMARY KEY,
    registered_at_ms  INTEGER NOT NULL
);
-- Targets that already have cursors were served before the registry existed.
INSERT INTO outbox_targets (name, registered_at_ms)
    SELECT DISTINCT target, CAST(unixepoch('subsec') * 1000 AS INTEGER) FROM outbox_cursors;

-- What each live relay serves ([{"name": ..., "state": {...}}], the state as
-- the relay reports it), and until when it counts as live, by the database's clock.
ALTER TABLE outbox_relays ADD COLUMN targets TEXT NOT NULL DEFAULT '[]';
ALTER TABLE outbox_relays ADD COLUMN expires_ms INTEGER NOT NULL DEFAULT 0;
