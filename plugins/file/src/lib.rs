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
//! A batch is written with as few writes as the OS allows. When a write fails,
//! the envelopes whose lines are complete in the file are delivered and the rest
//! are retried with the OS error; a line torn by the failure is closed with a
//! line break before anything else is appended, so a reader loses at most that
//! one line and never a neighbour.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

use outbox_relay_guest::{Config, Envelope, Error, Outcome, Result, Transport};

#[path = "../../shared/json_line.rs"]
mod json_line;

struct FileTransport {
    path: String,
    fsync: bool,
    /// Dropped after an I/O error, so the next batch reopens (and repairs) it.
    file: Option<File>,
}

impl Transport for FileTransport {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        let path = config.get_str("path")?;
        if path.trim().is_empty() {
            return Err(Error::new("config: key `path` must not be empty"));
        }
        let fsync = config.get_bool_or("fsync", false)?;
        // Opening now turns a path outside the mapped directories into a start-up
        // error that names the key, instead of a retry on every batch.
        let file = open(path).map_err(|err| {
            Error::new(format!(
                "config: key `path`: cannot open {path:?} for appending: {err} \
                 (is its directory mapped into the sandbox?)"
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

        let written = match self.append(&buf) {
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
    /// Appends `buf`; on failure, reports how many of its bytes reached the file.
    fn append(&mut self, buf: &[u8]) -> core::result::Result<(), (usize, std::io::Error)> {
        let file = match self.file.as_mut() {
            Some(file) => file,
            None => self.file.insert(open(&self.path).map_err(|err| (0, err))?),
        };
        let mut written = 0;
        while written < buf.len() {
            match file.write(&buf[written..]) {
                Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err((written, err)),
            }
        }
        file.flush().map_err(|err| (written, err))?;
        if self.fsync {
            // Nothing is known to be durable when the sync fails: retry it all.
            file.sync_data().map_err(|err| (0, err))?;
        }
        Ok(())
    }
}

/// Opens `path` for appending, creating it, and makes sure whatever is appended
/// starts on a new line.
fn open(path: &str) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
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
