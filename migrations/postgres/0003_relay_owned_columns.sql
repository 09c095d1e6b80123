-- `xact_id` and `partition` are the relay's: the reading order and the
-- partition are only sound when they are the inserting transaction's id and
-- the partition the trigger computes. A producer that wrote its own
-- `xact_id` (a value from the future is never below the horizon, so that
-- row would never be delivered and would hold retention back for good) now
-- gets the right one anyway, and an UPDATE cannot move a row.
CREATE OR REPLACE FUNCTION outbox_assign_partition() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
DECLARE
    n INTEGER;
BEGIN
    NEW.xact_id := pg_current_xact_id();
    SELECT value::INTEGER INTO n FROM outbox_settings WHERE key = 'partitions';
    IF n IS NULL OR n <= 1 THEN
        NEW.partition := 0;
    ELSE
        NEW.partition := outbox_fnv1a(coalesce(NEW.partition_key, NEW.id::TEXT)) % n;
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION outbox_keep_position() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    NEW.xact_id := OLD.xact_id;
    NEW.partition := OLD.partition;
    NEW.seq := OLD.seq;
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_messages_keep_position
    BEFORE UPDATE OF xact_id, partition, seq ON outbox_messages
    FOR EACH ROW EXECUTE FUNCTION outbox_keep_position();
