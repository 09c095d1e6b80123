//! `file`: appends one JSON line per envelope to a file.
//!
//! ```toml
//! [targets.audit]
//! plugin = "file.wasm"
//! [targets.audit.config]
//! path = "/out/events.jsonl"   # required; inside a directory the operator maps
//! fsync = false                # optional; sync the data to disk after each batch
//! ```
//!
//! The sandbox has no files of its own: the operator maps a host directory into
//! it, and `path` names a file under that mapping. The line shape is described
//! in `shared/json_line.rs`.
//!
//! Lines are never torn, however many instances append to the file (one per
//! partition worker, and those of other relays sharing the directory). Each
//! write to the host carries whole lines only and is no longer than the host
//! takes in one write (`outbox_relay_guest::fs`: 64 KiB with wasmtime 48),
//! which the host appends with one `O_APPEND` write, so no other instance's
//! line lands inside it. A single line longer than that limit is written in
//! pieces and logged: only such a line can be interleaved with another
//! instance's (see `docs/transports/file.md` for what the host would need).
//!
//! When a write fails, the envelopes whose lines are complete in the file are
//! delivered and the rest are retried with the OS's reason (a full disk says
//! "no space left on device (ENOSPC)"); a line torn by the failure is closed
//! with a line break before this instance appends again.

use std::io;

use outbox_relay_guest::fs::AppendFile;
use outbox_relay_guest::{Config, Envelope, Error, Outcome, Result, Transport};

#[path = "../../shared/json_line.rs"]
mod json_line;

struct FileTransport {
    path: String,
    fsync: bool,
    /// Dropped after an I/O error, so the next batch reopens (and repairs) it.
    file: Option<AppendFile>,
}

impl Transport for FileTransport {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        config.only_keys(&["path", "fsync"])?;
        let path = config.get_str("path")?;
        if path.trim().is_empty() {
            return Err(Error::new("config: key `path` must not be empty"));
        }
        let fsync = config.get_bool_or("fsync", false)?;
        // Opening now turns a path outside the mapped directories into a start-up
        // error that names the key, instead of a retry on every batch.
        let file = open(path).map_err(|err| {
            Error::new(format!(
                "config: key `path`: cannot open {path:?} for appending: {err}"
            ))
        })?;
        Ok(FileTransport {
            path: path.to_owned(),
            fsync,
            file: Some(file),
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Delivered; batch.len()];
        let mut buf = Vec::new();
        // (index in batch, offset in `buf` just past its line)
        let mut line_ends = Vec::with_capacity(batch.len());
        for (i, envelope) in batch.iter().enumerate() {
            let start = buf.len();
            match json_line::write_line(&mut buf, envelope) {
                Ok(()) => line_ends.push((i, buf.len())),
                Err(err) => {
                    buf.truncate(start);
                    outcomes[i] = Outcome::reject(format!("cannot encode as JSON: {err}"));
                }
            }
        }

        let ends: Vec<usize> = line_ends.iter().map(|&(_, end)| end).collect();
        let written = match self.append(&buf, &ends) {
            Ok(()) => return outcomes,
            Err((written, err)) => {
                self.file = None;
                let reason = format!("append to {}: {err}", self.path);
                for &(i, end) in &line_ends {
                    if end > written {
                        outcomes[i] = Outcome::retry(reason.clone());
                    }
                }
                written
            }
        };
        outbox_relay_guest::log::warn(&format!(
            "{}: wrote {written} of {} bytes of the batch",
            self.path,
            buf.len()
        ));
        outcomes
    }
}

impl FileTransport {
    /// Appends `buf`, whose lines end at `ends`, in writes of whole lines; on
    /// failure, says how many of its bytes are whole lines in the file.
    fn append(
        &mut self,
        buf: &[u8],
        ends: &[usize],
    ) -> core::result::Result<(), (usize, io::Error)> {
        let file = match self.file.as_mut() {
            Some(file) => file,
            None => self.file.insert(open(&self.path).map_err(|err| (0, err))?),
        };
        let mut start = 0;
        let mut next = 0; // the first line not yet written
        while next < ends.len() {
            let limit = file.write_limit().map_err(|err| (start, err))?;
            let fit = lines_that_fit(&ends[next..], start, limit);
            let end = if fit == 0 {
                let end = ends[next];
                outbox_relay_guest::log::warn(&format!(
                    "{}: a {}-byte line is longer than one write ({limit} bytes); \
                     another instance's line may land inside it",
                    self.path,
                    end - start
                ));
                file.append_all(&buf[start..end])
                    .map_err(|err| (start, err))?;
                next += 1;
                end
            } else {
                let end = ends[next + fit - 1];
                file.append_whole(&buf[start..end])
                    .map_err(|err| (start, err))?;
                next += fit;
                end
            };
            start = end;
        }
        if self.fsync {
            // Nothing is known to be durable when the sync fails: retry it all.
            file.sync_data().map_err(|err| (0, err))?;
        }
        Ok(())
    }
}

/// How many of the lines ending at `ends` (the first starting at `start`)
/// fit in one write of at most `limit` bytes.
fn lines_that_fit(ends: &[usize], start: usize, limit: usize) -> usize {
    ends.partition_point(|&end| end - start <= limit)
}

/// Opens `path` for appending, creating it, and makes sure whatever is appended
/// starts on a new line.
fn open(path: &str) -> io::Result<AppendFile> {
    let mut file = AppendFile::open(path)?;
    if file.last_byte()?.is_some_and(|b| b != b'\n') {
        file.append_whole(b"\n")?;
    }
    Ok(file)
}

outbox_relay_guest::export_transport!(FileTransport);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn envelope(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            event_name: "e".into(),
            partition_key: None,
            payload: b"{\"n\":1}".to_vec(),
            headers: vec![],
            attempt: 1,
            created_at_ms: 5,
        }
    }

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    #[test]
    fn init_names_the_path_key() {
        for json in [r#"{}"#, r#"{"path": 3}"#, r#"{"path": " "}"#] {
            let err = FileTransport::init("t", &config(json)).err().unwrap();
            assert!(err.message().contains("`path`"), "{json}: {err}");
        }
    }

    #[test]
    fn batches_are_cut_at_line_ends() {
        // Lines of 4, 4 and 9 bytes.
        let ends = [4, 8, 17];
        assert_eq!(lines_that_fit(&ends, 0, 100), 3);
        assert_eq!(lines_that_fit(&ends, 0, 8), 2);
        assert_eq!(lines_that_fit(&ends, 0, 7), 1);
        assert_eq!(lines_that_fit(&ends, 0, 3), 0);
        assert_eq!(lines_that_fit(&ends[2..], 8, 9), 1);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = FileTransport::init("t", &config(r#"{"path": "/x", "fsnyc": true}"#))
            .err()
            .unwrap();
        assert!(err.message().contains("`fsnyc`"), "{err}");
    }

    #[test]
    fn appends_lines_and_repairs_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("outbox-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        std::fs::write(&path, b"torn").unwrap();
        let json = serde_json::json!({ "path": path }).to_string();

        let mut t = FileTransport::init("t", &config(&json)).unwrap();
        let out = t.deliver(vec![envelope("a"), envelope("b")]);
        assert_eq!(out, vec![Outcome::Delivered; 2]);
        let mut t = FileTransport::init("t", &config(&json)).unwrap();
        assert_eq!(t.deliver(vec![envelope("c")]), vec![Outcome::Delivered]);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "torn");
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with(r#"{"id":"a","#), "{}", lines[1]);
        assert!(lines[3].ends_with(r#""payload":{"n":1}}"#), "{}", lines[3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
