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

/// Payload bytes a partition's window holds at most; the oldest rows go
/// first. With `P` partitions the windows hold at most `P` × this.
pub(super) const WINDOW_BYTES: usize = 8 << 20;

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

#[derive(Default)]
struct Window {
    /// `false` until the first read: then `(start, end]` is covered.
    covered: bool,
    start: Position,
    end: Position,
    entries: VecDeque<LogEntry>,
    bytes: usize,
}

fn size(entry: &LogEntry) -> usize {
    match entry {
        Ok(m) => m.payload.len() + 64,
        Err(_) => 64,
    }
}

impl Window {
    /// `limit` rows after `after`, if the window holds that many.
    fn serve(&self, after: Position, limit: usize) -> Option<Vec<LogEntry>> {
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
    ) -> Vec<LogEntry> {
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
            self.entries.push_back(row);
        }
        let from = self.entries.partition_point(|e| entry_position(e) <= after);
        let out: Vec<LogEntry> = self.entries.range(from..).take(limit).cloned().collect();
        // Oldest first; the rows just answered stay (a laggard behind them
        // reads the database itself).
        while self.bytes > WINDOW_BYTES {
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
        let partitions = (targets > 1).then(|| {
            (0..partitions)
                .map(|p| {
                    let window = PartitionWindow {
                        frontier: tokio::sync::Mutex::new(()),
                        window: Mutex::new(Window::default()),
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
                return Ok(hit);
            }
            window.at_frontier(after)
        };
        if !frontier {
            return self
                .storage
                .fetch_pending(partition, after, limit, max_payload_bytes)
                .await;
        }
        let _frontier = part.frontier.lock().await;
        // Another worker may have read this stretch while this one waited.
        let from = {
            let window = part.lock();
            if let Some(hit) = window.serve(after, want) {
                return Ok(hit);
            }
            window.read_from(after)
        };
        let rows = self
            .storage
            .fetch_pending(partition, from, limit, max_payload_bytes)
            .await?;
        Ok(part.lock().extend(from, rows, after, want))
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

    fn seqs(rows: &[LogEntry]) -> Vec<i64> {
        rows.iter().map(|r| entry_position(r).seq).collect()
    }

    #[test]
    fn a_stretch_read_once_serves_every_cursor_inside_it() {
        let mut w = Window::default();
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
        let mut w = Window::default();
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

    #[test]
    fn the_window_stays_within_its_bytes_by_dropping_the_oldest() {
        let mut w = Window::default();
        let per = size(&row(1));
        let n = (WINDOW_BYTES / per) as i64 + 100;
        w.extend(at(0), (1..=n).map(row).collect(), at(0), 1);
        assert!(w.bytes <= WINDOW_BYTES);
        assert!(w.start > at(0), "the start moved past the dropped rows");
        assert!(w.serve(at(0), 1).is_none(), "dropped rows are read again");
        let first = w.start.seq + 1;
        assert_eq!(seqs(&w.serve(w.start, 1).unwrap()), [first]);
    }
}
