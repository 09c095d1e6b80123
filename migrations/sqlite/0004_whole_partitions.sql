-- A `partition` that is not a whole number (a REAL such as 1.5: the column's
-- INTEGER affinity keeps it) lies in no partition's range of the
-- (partition, seq) index, so no relay would ever read that row. It is
-- refused when written; text and blobs sort after every number and are read,
-- and dead-lettered, with the out-of-range rows.
CREATE TRIGGER outbox_messages_whole_partition
    BEFORE INSERT ON outbox_messages
    WHEN typeof(NEW.partition) = 'real'
BEGIN
    SELECT RAISE(ABORT, 'outbox_messages.partition must be a whole number');
END;

CREATE TRIGGER outbox_messages_whole_partition_update
    BEFORE UPDATE OF partition ON outbox_messages
    WHEN typeof(NEW.partition) = 'real'
BEGIN
    SELECT RAISE(ABORT, 'outbox_messages.partition must be a whole number');
END;

-- Rows written before this check are moved where partition 0 reads them,
-- and dead-lettered with a reason that keeps the value.
UPDATE outbox_messages SET partition = 'not a whole number: ' || partition
    WHERE typeof(partition) = 'real';
