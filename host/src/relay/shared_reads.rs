//! Reads of the log shared by the targets of a partition: the log is read
//! once and delivered N times.
//!
//! Each partition keeps a window: the rows of one contiguous stretch of the
//! log, `(start, end]`, exactly as the database returned them, at most
//! [`WINDOW_BYTES`] of payload. A worker whose cursor lies inside it is
//! served from memory when the window holds a whole batch after the cursor;
//! the worker at the window's end (the frontier) reads the next rows from
//! the database for everyone, under the partition's frontier lock, so
//! targets that start together read each batch once. A worker behind the
//! window (catch-up, a slow or failing target, a new one) reads the
//! database itself and leaves the window alone: it never holds another
//! back, and each target keeps its own cursor, lease, retries and order.
//!
//! Why serving from the window is as safe as reading: the window is made
//! only of successive reads, each from the previous one's last position, so
//! it holds every row the database will ever show in `(start, end]`; a
//! worker that read those rows itself would move its cursor past the same
//! stretch (on Postgres the reads stop at the settled horizon, so no late
//! commit lands inside a stretch already read).
//!
//! With one target there is nothing to share: reads go straight through.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::message::{LogEntry, Position, entry_position};
use crate::storage::{Result, Storage};

/// What all the windows of a relay hold at most, rows counted with their
/// names, keys and headers; each of `P` partitions gets `WINDOW_BYTES / P`
/// (at least [`MIN_PARTITION_BYTES`]). The oldest rows go first.
pub(super) const WINDOW_BYTES: usize = 64 << 20;

/// The least a partition's window may hold (so at most 4096 × this, 256 MiB,
/// with the most partitions a relay may have).
const MIN_PARTITION_BYTES: usize = 64 << 10;

/// The log reads of every worker of this relay.
pub(super) struct SharedLog {
    storage: Arc<dyn Storage>,
    /// `None` with a single target: no sharing.
    partitions: Option<HashMap<u32, Arc<PartitionWindow>>>,
}

struct PartitionWindow {
    /// Held while the frontier is read, so that one read serves all.
    frontier: tokio::sync::Mutex<()>,
    window: Mutex<Window>,
}

impl PartitionWindow {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Window {
    /// `false` until the first read: then `(start, end]` is covered.
    covered: bool,
    start: Position,
    end: Position,
    /// Shared with the batches handed out, so that the lock is held only
    /// to count references, never to copy payloads.
    entries: VecDeque<Arc<LogEntry>>,
    bytes: usize,
    /// What this window may hold.
    budget: usize,
}

impl Window {
    fn new(budget: usize) -> Self {
        Self {
            covered: false,
            start: Position::default(),
            end: Position::default(),
            entries: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }
}

/// What a row takes in memory, about: its texts, payload and headers, and
/// the struct around them.
fn size(entry: &LogEntry) -> usize {
    const STRUCT: usize = 256;
    match entry {
        Ok(m) => {
            STRUCT
                + m.payload.len()
                + m.event_name.len()
                + m.partition_key.as_ref().map_or(0, String::len)
                + m.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 64)
                    .sum::<usize>()
        }
        Err(bad) => STRUCT + bad.id.len() + bad.event_name.len() + bad.reason.len(),
    }
}

/// Rows taken from the window, copied out after its lock is let go.
fn owned(rows: Vec<Arc<LogEntry>>) -> Vec<LogEntry> {
    rows.into_iter().map(|r| (*r).clone()).collect()
}

impl Window {
    /// `limit` rows after `after`, if the window holds that many.
    fn serve(&self, after: Position, limit: usize) -> Option<Vec<Arc<LogEntry>>> {
        if !self.covered || after < self.start || after >= self.end {
            return None;
        }
        let from = self.entries.partition_point(|e| entry_position(e) <= after);
        (self.entries.len() - from >= limit)
            .then(|| self.entries.range(from..from + limit).cloned().collect())
    }

    /// Whether a read at `after` is the frontier's (or starts the window).
    fn at_frontier(&self, after: Position) -> bool {
        !self.covered || after >= self.start
    }

    /// Where the next database read for `after` starts: the window's end
    /// when `after` lies inside it, else `after` (the window starts anew).
    fn read_from(&self, after: Position) -> Position {
        if self.covered && self.start <= after && after <= self.end {
            self.end
        } else {
            after
        }
    }

    /// Adds the rows a read from `from` returned, and answers `after`.
    fn extend(
        &mut self,
        from: Position,
        rows: Vec<LogEntry>,
        after: Position,
        limit: usize,
    ) -> Vec<Arc<LogEntry>> {
        if !(self.covered && from == self.end) {
            // A fresh stretch: the old one is not contiguous with it.
            self.entries.clear();
            self.bytes = 0;
            self.covered = true;
            self.start = from;
            self.end = from;
        }
        for row in rows {
            self.end = entry_position(&row);
            self.bytes += size(&row);
            self.entries.push_back(Arc::new(row));
        }
        let from = self.entries.partition_point(|e| entry_position(e) <= after);
        let out: Vec<Arc<LogEntry>> = self.entries.range(from..).take(limit).cloned().collect();
        // Oldest first (a batch larger than the whole budget is dropped
        // too: the others then read it themselves).
        while self.bytes > self.budget {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size(&old);
            self.start = entry_position(&old);
        }
        out
    }
}

impl SharedLog {
    /// Shared reads for `targets` targets over `partitions` partitions.
    pub fn new(storage: Arc<dyn Storage>, targets: usize, partitions: u32) -> Self {
        let budget = (WINDOW_BYTES / partitions.max(1) as usize).max(MIN_PARTITION_BYTES);
        let partitions = (targets > 1).then(|| {
            (0..partitions)
                .map(|p| {
                    let window = PartitionWindow {
                        frontier: tokio::sync::Mutex::new(()),
                        window: Mutex::new(Window::new(budget)),
                    };
                    (p, Arc::new(window))
                })
                .collect()
        });
        Self {
            storage,
            partitions,
        }
    }

    /// What [`Storage::fetch_pending`] returns for these arguments.
    pub async fn fetch_pending(
        &self,
        partition: u32,
        after: Position,
        limit: u32,
        max_payload_bytes: usize,
    ) -> Result<Vec<LogEntry>> {
        let Some(part) = self
            .partitions
            .as_ref()
            .and_then(|p| p.get(&partition).cloned())
        else {
            return self
                .storage
                .fetch_pending(partition, after, limit, max_payload_bytes)
                .await;
        };
        let want = limit as usize;
        // Decided under the window's lock, which no `await` may hold.
        let frontier = {
            let window = part.lock();
            if let Some(hit) = window.serve(after, want) {
                drop(window);
                return Ok(owned(hit));
            }
            window.at_frontier(after)
        };
        if !frontier {
            return self
                .storage
                .fetch_pending(partition, after, limit, max_payload_bytes)
                .await;
        }
        let frontier_lock = part.frontier.lock().await;
        // Another worker may have read this stretch while this one waited,
        // or moved the window past this cursor (then it reads alone, and
        // leaves the window to the others).
        let from = {
            let window = part.lock();
            if let Some(hit) = window.serve(after, want) {
                drop(window);
                return Ok(owned(hit));
            }
            window.at_frontier(after).then(|| window.read_from(after))
        };
        let Some(from) = from else {
            drop(frontier_lock);
            return self
                .storage
                .fetch_pending(partition, after, limit, max_payload_bytes)
                .await;
        };
        let rows = self
            .storage
            .fetch_pending(partition, from, limit, max_payload_bytes)
            .await?;
        let out = part.lock().extend(from, rows, after, want);
        Ok(owned(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Headers, Message};

    fn row(seq: i64) -> LogEntry {
        Ok(Message {
            seq,
            xid: 0,
            id: uuid::Uuid::now_v7(),
            event_name: "e".into(),
            partition_key: None,
            partition: 0,
            payload: vec![0; 10],
            headers: Headers::default(),
            created_at_ms: 0,
        })
    }

    fn at(seq: i64) -> Position {
        Position { xid: 0, seq }
    }

    fn seqs(rows: &[Arc<LogEntry>]) -> Vec<i64> {
        rows.iter().map(|r| entry_position(r).seq).collect()
    }

    #[test]
    fn a_stretch_read_once_serves_every_cursor_inside_it() {
        let mut w = Window::new(WINDOW_BYTES);
        assert!(w.serve(at(0), 2).is_none());
        assert!(w.at_frontier(at(0)));
        let got = w.extend(at(0), (1..=4).map(row).collect(), at(0), 4);
        assert_eq!(seqs(&got), [1, 2, 3, 4]);
        // A second target at the start: served without a read.
        assert_eq!(seqs(&w.serve(at(0), 4).unwrap()), [1, 2, 3, 4]);
        assert_eq!(seqs(&w.serve(at(2), 2).unwrap()), [3, 4]);
        // Not enough after 2 for a batch of 3: the frontier reads on from 4.
        assert!(w.serve(at(2), 3).is_none());
        assert_eq!(w.read_from(at(2)), at(4));
        let got = w.extend(at(4), (5..=6).map(row).collect(), at(2), 3);
        assert_eq!(seqs(&got), [3, 4, 5], "the window's rows, then the read's");
        // A short read leaves the end at its last row.
        assert_eq!(w.end, at(6));
        let got = w.extend(at(6), vec![], at(6), 3);
        assert!(got.is_empty());
        assert_eq!(w.end, at(6));
    }

    #[test]
    fn a_cursor_behind_or_ahead_of_the_window_never_gets_its_rows() {
        let mut w = Window::new(WINDOW_BYTES);
        w.extend(at(10), (11..=12).map(row).collect(), at(10), 2);
        // Behind: not the frontier's, and nothing served.
        assert!(w.serve(at(5), 1).is_none());
        assert!(!w.at_frontier(at(5)));
        // Ahead: the frontier's, and the next read starts the window anew.
        assert!(w.at_frontier(at(20)));
        assert_eq!(w.read_from(at(20)), at(20));
        let got = w.extend(at(20), (21..=22).map(row).collect(), at(20), 5);
        assert_eq!(seqs(&got), [21, 22]);
        assert_eq!(w.start, at(20), "rows 11..12 are gone: not contiguous");
        assert!(w.serve(at(10), 1).is_none());
    }

    /// Two targets with different batch sizes, one ahead of the other,
    /// over a real SQLite log: each gets exactly what reading the database
    /// itself gives it, in order, through a window small enough to evict.
    #[tokio::test]
    async fn shared_reads_give_each_reader_what_a_direct_read_gives() {
        use crate::message::NewMessage;
        use crate::storage::sqlite::SqliteStorage;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("log.db").display());
        let storage = Arc::new(SqliteStorage::connect(&url).await.unwrap());
        storage.migrate().await.unwrap();
        storage.ensure_partitions(1).await.unwrap();
        let messages: Vec<NewMessage> = (0..700)
            .map(|i| NewMessage::new("e", vec![b'x'; 300 + i % 7]))
            .collect();
        storage.save(&messages).await.unwrap();
        let mut log = SharedLog::new(storage.clone(), 2, 1);
        // A small window: 64 KiB holds about 120 of these rows.
        for part in log.partitions.as_mut().unwrap().values_mut() {
            Arc::get_mut(part).unwrap().window.get_mut().unwrap().budget = 64 << 10;
        }
        let direct = storage
            .fetch_pending(0, Position::default(), 10_000, 1 << 20)
            .await
            .unwrap();
        assert_eq!(direct.len(), 700);
        let (mut a, mut b) = (Position::default(), Position::default());
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        loop {
            // A reads three batches of 100 for each of B's one of 45.
            for _ in 0..3 {
                let batch = log.fetch_pending(0, a, 100, 1 << 20).await.unwrap();
                if let Some(last) = batch.last() {
                    a = entry_position(last);
                }
                got_a.extend(batch);
            }
            let batch = log.fetch_pending(0, b, 45, 1 << 20).await.unwrap();
            let done = batch.is_empty();
            if let Some(last) = batch.last() {
                b = entry_position(last);
            }
            got_b.extend(batch);
            if done {
                break;
            }
        }
        assert_eq!(got_a, direct, "the fast reader");
        assert_eq!(got_b, direct, "the slow reader, behind the window at times");
    }

    #[test]
    fn the_window_stays_within_its_bytes_by_dropping_the_oldest() {
        let mut w = Window::new(WINDOW_BYTES);
        let per = size(&row(1));
        let n = (WINDOW_BYTES / per) as i64 + 100;
        w.extend(at(0), (1..=n).map(row).collect(), at(0), 1);
        assert!(w.bytes <= w.budget);
        assert!(w.start > at(0), "the start moved past the dropped rows");
        assert!(w.serve(at(0), 1).is_none(), "dropped rows are read again");
        let first = w.start.seq + 1;
        assert_eq!(seqs(&w.serve(w.start, 1).unwrap()), [first]);
    }
}
