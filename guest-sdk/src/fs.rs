//! Appending records to a file that other instances append to as well.
//!
//! A target has one instance per worker (one per partition), and instances
//! of several relays may share a mapped directory, so a file target's file
//! has many writers. What keeps their records whole is the kernel: a single
//! `write(2)` on a file opened with `O_APPEND` (wasmtime issues
//! `pwritev2(RWF_APPEND)` on Linux) lands at the end of the file in one
//! piece, never interleaved with another writer's. So a record is whole when
//! it reaches the host in **one** write that the host passes to the kernel as
//! one call.
//!
//! [`AppendFile`] gives a plugin that control. `std::fs::File` does not: the
//! C library beneath it picks the size of each stream write, and it reports
//! every failed write as `EIO`, which hides a full disk. `AppendFile` talks to
//! `wasi:filesystem` directly:
//!
//! - [`AppendFile::write_limit`] is how many bytes the host takes in one
//!   write (wasmtime-wasi 48: 64 KiB for a file, its `check-write` permit). The host writes them with one
//!   append, repeated only if the kernel writes less (which on a local file
//!   system happens only when the disk fills up).
//! - [`AppendFile::append_whole`] sends bytes in one write, up to that limit.
//! - Errors keep the OS's reason: a full disk is
//!   `ErrorKind::StorageFull`, "no space left on device (ENOSPC)".
//!
//! Natively (in a plugin's `cargo test`), the same type wraps `std::fs`.

use std::io;

/// A file opened for appending, created when missing.
pub struct AppendFile {
    inner: imp::File,
}

impl AppendFile {
    /// Opens `path` for appending, creating it. On the wasm target `path` is
    /// a path inside a directory the operator mapped (`sandbox.dirs`); an
    /// error says which mappings there are when it is in none.
    pub fn open(path: &str) -> io::Result<AppendFile> {
        Ok(AppendFile {
            inner: imp::File::open(path)?,
        })
    }

    /// The file's size in bytes.
    pub fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The last byte of the file, if it has one.
    pub fn last_byte(&self) -> io::Result<Option<u8>> {
        self.inner.last_byte()
    }

    /// How many bytes the next [`AppendFile::append_whole`] may take, waiting
    /// until the host can take any.
    pub fn write_limit(&mut self) -> io::Result<usize> {
        self.inner.write_limit()
    }

    /// Appends `bytes` with one write to the host, so that no other writer's
    /// append lands inside them. `bytes` must be no longer than
    /// [`AppendFile::write_limit`]; longer is an `InvalidInput` error and
    /// nothing is written.
    pub fn append_whole(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let limit = self.write_limit()?;
        if bytes.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes do not fit in one write (the host takes at most {limit})",
                    bytes.len()
                ),
            ));
        }
        self.inner.append(bytes)
    }

    /// Appends `bytes` in as many writes as it takes. Another writer's append
    /// may land between two of them: use this only for a record longer than
    /// [`AppendFile::write_limit`].
    pub fn append_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = self.write_limit()?.min(bytes.len());
            self.inner.append(&bytes[..n])?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Flushes the file's data to the disk (`fdatasync`).
    pub fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use std::io;

    use crate::bindings::files_world::wasi::filesystem::preopens;
    use crate::bindings::files_world::wasi::filesystem::types::{
        Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags, filesystem_error_code,
    };
    use crate::bindings::files_world::wasi::io::streams::{OutputStream, StreamError};

    use super::relative;

    pub(super) struct File {
        // Declared first so it is dropped first: a stream is a child of the
        // descriptor it came from.
        stream: OutputStream,
        descriptor: Descriptor,
    }

    impl File {
        pub(super) fn open(path: &str) -> io::Result<File> {
            let mut mapped = Vec::new();
            let mut best: Option<(Descriptor, String)> = None;
            for (dir, guest) in preopens::get_directories() {
                let Some(rest) = relative(path, &guest) else {
                    mapped.push(guest);
                    continue;
                };
                let better = best.as_ref().is_none_or(|(_, b)| rest.len() < b.len());
                mapped.push(guest);
                if better {
                    best = Some((dir, rest.to_owned()));
                }
            }
            let Some((dir, rest)) = best else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{path:?} is in no directory mapped into the sandbox (mapped: {})",
                        if mapped.is_empty() {
                            "none; map one with `sandbox.dirs`".to_owned()
                        } else {
                            mapped.join(", ")
                        }
                    ),
                ));
            };
            let descriptor = dir
                .open_at(
                    PathFlags::SYMLINK_FOLLOW,
                    &rest,
                    OpenFlags::CREATE,
                    DescriptorFlags::READ | DescriptorFlags::WRITE,
                )
                .map_err(from_code)?;
            let stream = descriptor.append_via_stream().map_err(from_code)?;
            Ok(File { stream, descriptor })
        }

        pub(super) fn len(&self) -> io::Result<u64> {
            Ok(self.descriptor.stat().map_err(from_code)?.size)
        }

        pub(super) fn last_byte(&self) -> io::Result<Option<u8>> {
            let len = self.len()?;
            if len == 0 {
                return Ok(None);
            }
            let (bytes, _) = self.descriptor.read(1, len - 1).map_err(from_code)?;
            Ok(bytes.first().copied())
        }

        pub(super) fn write_limit(&mut self) -> io::Result<usize> {
            loop {
                let permit = self.stream.check_write().map_err(from_stream)?;
                if permit > 0 {
                    return Ok(usize::try_from(permit).unwrap_or(usize::MAX));
                }
                self.stream.subscribe().block();
            }
        }

        /// One `write` (at most the permit), then a flush that waits for it.
        pub(super) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.stream.write(bytes).map_err(from_stream)?;
            self.stream.blocking_flush().map_err(from_stream)
        }

        pub(super) fn sync_data(&self) -> io::Result<()> {
            self.descriptor.sync_data().map_err(from_code)
        }
    }

    fn from_stream(err: StreamError) -> io::Error {
        match err {
            StreamError::Closed => io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the file's output stream is closed",
            ),
            StreamError::LastOperationFailed(e) => match filesystem_error_code(&e) {
                Some(code) => from_code(code),
                None => io::Error::other(e.to_debug_string()),
            },
        }
    }

    /// The OS's reason, with its errno name so an operator can search for it.
    fn from_code(code: ErrorCode) -> io::Error {
        use io::ErrorKind as K;
        let (kind, text) = match code {
            ErrorCode::InsufficientSpace => (K::StorageFull, "no space left on device (ENOSPC)"),
            ErrorCode::Quota => (K::QuotaExceeded, "disk quota exceeded (EDQUOT)"),
            ErrorCode::FileTooLarge => (K::FileTooLarge, "file too large (EFBIG)"),
            ErrorCode::ReadOnly => (K::ReadOnlyFilesystem, "read-only file system (EROFS)"),
            ErrorCode::Access => (K::PermissionDenied, "permission denied (EACCES)"),
            ErrorCode::NotPermitted => (K::PermissionDenied, "operation not permitted (EPERM)"),
            ErrorCode::NoEntry => (K::NotFound, "no such file or directory (ENOENT)"),
            ErrorCode::IsDirectory => (K::IsADirectory, "is a directory (EISDIR)"),
            ErrorCode::NotDirectory => (K::NotADirectory, "not a directory (ENOTDIR)"),
            ErrorCode::Io => (K::Other, "input/output error (EIO)"),
            ErrorCode::InsufficientMemory => (K::OutOfMemory, "out of memory (ENOMEM)"),
            other => return io::Error::other(format!("{other:?}")),
        };
        io::Error::new(kind, text)
    }
}

/// `path` relative to the mapped directory `dir`, if it is inside it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn relative<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let dir = dir.trim_end_matches('/');
    let rest = path.strip_prefix(dir)?;
    let rest = if dir.is_empty() {
        rest.trim_start_matches('/')
    } else {
        rest.strip_prefix('/')?
    };
    (!rest.is_empty()).then_some(rest)
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::fs::OpenOptions;
    use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};

    /// What one `write(2)` is asked to take natively.
    const WRITE_LIMIT: usize = 1 << 30;

    pub(super) struct File {
        file: std::fs::File,
    }

    impl File {
        pub(super) fn open(path: &str) -> io::Result<File> {
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(path)?;
            Ok(File { file })
        }

        pub(super) fn len(&self) -> io::Result<u64> {
            Ok(self.file.metadata()?.len())
        }

        pub(super) fn last_byte(&self) -> io::Result<Option<u8>> {
            let len = self.len()?;
            if len == 0 {
                return Ok(None);
            }
            let mut file = &self.file;
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            Ok(Some(last[0]))
        }

        pub(super) fn write_limit(&mut self) -> io::Result<usize> {
            Ok(WRITE_LIMIT)
        }

        pub(super) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            match self.file.write(bytes)? {
                n if n == bytes.len() => Ok(()),
                n => Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("wrote {n} of {} bytes", bytes.len()),
                )),
            }
        }

        pub(super) fn sync_data(&self) -> io::Result<()> {
            self.file.sync_data()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative("/out/a.jsonl", "/out"), Some("a.jsonl"));
        assert_eq!(relative("/out/a.jsonl", "/out/"), Some("a.jsonl"));
        assert_eq!(relative("/outside/a", "/out"), None);
        assert_eq!(relative("/out", "/out"), None);
        assert_eq!(relative("/a/b", "/"), Some("a/b"));
    }

    #[test]
    fn appends_and_reads_the_tail() {
        let dir = std::env::temp_dir().join(format!("outbox-sdk-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.jsonl");
        let path = path.to_str().unwrap();
        let mut f = AppendFile::open(path).unwrap();
        assert!(f.is_empty().unwrap());
        assert_eq!(f.last_byte().unwrap(), None);
        f.append_whole(b"one\n").unwrap();
        f.append_all(b"two").unwrap();
        assert_eq!(f.len().unwrap(), 7);
        assert_eq!(f.last_byte().unwrap(), Some(b'o'));
        let mut again = AppendFile::open(path).unwrap();
        again.append_whole(b"\n").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"one\ntwo\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
