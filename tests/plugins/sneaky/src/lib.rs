//! `sneaky`: on every `deliver`, tries one thing its sandbox must not allow,
//! chosen by config `attempt`. Where the attempt fails, as it must, the
//! plugin answers `retry` with the error it saw, so the host dead-letters the
//! message with that reason; where it succeeded, it answers `delivered` and
//! says what leaked, so a test that expects a dead letter fails loudly.
//!
//! | `attempt` | what it tries |
//! |---|---|
//! | `read-file` | read `/etc/passwd` |
//! | `read-env` | list environment variables |
//! | `connect` | connect to config `address` (not in `allow_tcp`) |
//! | `http` | HTTP to config `url` (not in `allow_http`) |
//! | `alloc` | allocate and touch 1 GiB |
//! | `recurse` | recurse without bound |
//! | `stderr` | write 100 MB to stderr, then panic |
//! | `sign` | sign with config `key` (not granted to its target) |
//! | `sockets` | connect config `count` times to config `address` (allowed), keeping every socket |
//! | `lookup` | look up the host name config `name` (not in `allow_tcp`) |
//! | `files` | create config `count` files in `/data`, keeping every one open |
//! | `link` | create a symlink and a hard link in `/data` pointing outside it |
//! | `stream-files` | open config `count` files in `/data`, keep a stream of each and drop the descriptor |
//! | `http-flood` | send config `count` HTTP requests to config `url` (allowed) in one call |
//! | `listings` | list `/data` config `count` times, keeping every listing |
//! | `print` | print a marker line to stdout |
//! | `framing` | HTTP to config `url` (allowed) with both `transfer-encoding: chunked` and `content-length` |
//! | `tls-key` | find its target's TLS client key: read config `path` (the key file on the host), the environment, every mapped directory, and sign with a key named config `key`; then TLS to config `address` (allowed), to show the key works for the host |
//! | `tls-flood` | open config `count` TLS connections to config `address` (allowed), keeping every one |

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport, http, net, signing};

mod raw {
    wit_bindgen::generate!({ path: "wasi", world: "sneaky:raw/raw", generate_all });
}

/// The mapped `/data` directory, as WASI's own descriptor.
fn data_dir() -> std::result::Result<raw::wasi::filesystem::types::Descriptor, String> {
    raw::wasi::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, path)| path == "/data")
        .map(|(dir, _)| dir)
        .ok_or_else(|| "no /data mapped".to_string())
}

/// Sockets or files this instance opened and never closed, across calls.
static HELD: AtomicU64 = AtomicU64::new(0);

struct Sneaky {
    attempt: String,
    config: Config,
}

impl Transport for Sneaky {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        Ok(Sneaky {
            attempt: config.get_str("attempt")?.to_string(),
            config: config.clone(),
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let result = self.try_it();
        batch
            .iter()
            .map(|_| match &result {
                Ok(leak) => {
                    eprintln!("LEAKED: {leak}");
                    Outcome::Delivered
                }
                Err(seen) => Outcome::Retry {
                    reason: seen.clone(),
                    delay_ms: None,
                },
            })
            .collect()
    }
}

impl Sneaky {
    fn count(&self) -> std::result::Result<u64, String> {
        self.config.get_u64("count").map_err(|e| e.to_string())
    }

    /// `Ok(what leaked)` if the sandbox let it through, `Err(what stopped it)`.
    fn try_it(&self) -> std::result::Result<String, String> {
        match self.attempt.as_str() {
            "read-file" => std::fs::read_to_string("/etc/passwd")
                .map(|text| format!("{} bytes of /etc/passwd", text.len()))
                .map_err(|e| format!("reading /etc/passwd failed: {e}")),
            "read-env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                if vars.is_empty() {
                    Err("reading the environment found no variables".into())
                } else {
                    Ok(format!("environment variables {vars:?}"))
                }
            }
            "connect" => {
                let address = self.config.get_str("address").map_err(|e| e.to_string())?;
                net::connect(address, std::time::Duration::from_secs(2))
                    .map(|_| format!("a connection to {address}"))
                    .map_err(|e| format!("connecting failed: {e}"))
            }
            "http" => {
                let url = self.config.get_str("url").map_err(|e| e.to_string())?;
                let request = http::Request::post(url, Vec::new());
                match http::send(vec![request]).pop() {
                    Some(Ok(r)) => Ok(format!("an HTTP {} from {url}", r.status)),
                    Some(Err(e)) => Err(format!("HTTP failed: {e}")),
                    None => Err("HTTP returned nothing".into()),
                }
            }
            "stream-files" => {
                use raw::wasi::filesystem::types as fs;
                let dir = data_dir()?;
                for _ in 0..self.count()? {
                    let n = HELD.load(Ordering::Relaxed);
                    let file = dir
                        .open_at(
                            fs::PathFlags::empty(),
                            &format!("s{n}"),
                            fs::OpenFlags::CREATE,
                            fs::DescriptorFlags::READ | fs::DescriptorFlags::WRITE,
                        )
                        .map_err(|e| format!("holding {n} file streams, then: {e:?}"))?;
                    let stream = file
                        .read_via_stream(0)
                        .map_err(|e| format!("a stream of file {n}: {e:?}"))?;
                    std::mem::forget(stream);
                    drop(file);
                    HELD.fetch_add(1, Ordering::Relaxed);
                }
                Ok(format!(
                    "{} file streams held, their descriptors dropped",
                    HELD.load(Ordering::Relaxed)
                ))
            }
            "http-flood" => {
                let url = self.config.get_str("url").map_err(|e| e.to_string())?;
                let count = self.count()?;
                let requests = (0..count)
                    .map(|_| http::Request::post(url, Vec::new()))
                    .collect();
                let answered = http::send(requests).iter().filter(|r| r.is_ok()).count();
                // Not a leak either way: the test counts the connections the
                // server saw at once.
                Err(format!("{answered} of {count} requests answered"))
            }
            "listings" => {
                let dir = data_dir()?;
                for _ in 0..self.count()? {
                    let n = HELD.load(Ordering::Relaxed);
                    let listing = dir
                        .read_directory()
                        .map_err(|e| format!("holding {n} listings, then: {e:?}"))?;
                    std::mem::forget(listing);
                    HELD.fetch_add(1, Ordering::Relaxed);
                }
                Ok(format!("{} listings held", HELD.load(Ordering::Relaxed)))
            }
            "print" => {
                println!("SNEAKY-STDOUT-MARKER");
                Err("printed a marker to stdout".into())
            }
            "framing" => {
                let url = self.config.get_str("url").map_err(|e| e.to_string())?;
                let request = http::Request::post(url, b"hello".to_vec())
                    .header("Transfer-Encoding", "chunked")
                    .header("Content-Length", "5");
                match http::send(vec![request]).pop() {
                    Some(Ok(r)) => Ok(format!("an HTTP {} with contradictory framing", r.status)),
                    Some(Err(e)) => Err(format!("HTTP failed: {e}")),
                    None => Err("HTTP returned nothing".into()),
                }
            }
            "tls-key" => {
                let mut seen = Vec::new();
                let path = self.config.get_str("path").map_err(|e| e.to_string())?;
                match std::fs::read(path) {
                    Ok(bytes) => return Ok(format!("{} bytes of {path}", bytes.len())),
                    Err(e) => seen.push(format!("reading {path}: {e}")),
                }
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                if !vars.is_empty() {
                    return Ok(format!("environment {vars:?}"));
                }
                seen.push("no environment".into());
                for (dir, guest) in raw::wasi::filesystem::preopens::get_directories() {
                    let entries = dir
                        .read_directory()
                        .map_err(|e| format!("{guest}: {e:?}"))?;
                    while let Ok(Some(entry)) = entries.read_directory_entry() {
                        let file = format!("{guest}/{}", entry.name);
                        if let Ok(text) = std::fs::read_to_string(&file)
                            && text.contains("PRIVATE KEY")
                        {
                            return Ok(format!("a private key in {file}"));
                        }
                    }
                    seen.push(format!("nothing in {guest}"));
                }
                let key = self.config.get_str("key").map_err(|e| e.to_string())?;
                if let Ok(sig) = signing::sign(key, b"x") {
                    return Ok(format!("a {}-byte signature with {key}", sig.len()));
                }
                seen.push(format!("no signing key {key}"));
                let address = self.config.get_str("address").map_err(|e| e.to_string())?;
                let protocol = net::TlsStream::connect(address, std::time::Duration::from_secs(5))
                    .map(|s| s.protocol().unwrap_or_default())
                    .map_err(|e| e.to_string());
                seen.push(format!("TLS to {address}: {protocol:?}"));
                Err(seen.join("; "))
            }
            "tls-flood" => {
                let address = self.config.get_str("address").map_err(|e| e.to_string())?;
                let mut held = Vec::new();
                for n in 0..self.count()? {
                    match net::TlsStream::connect(address, std::time::Duration::from_secs(5)) {
                        Ok(conn) => held.push(conn),
                        Err(e) => {
                            std::mem::forget(held);
                            return Err(format!("holding {n} TLS connections, then: {e}"));
                        }
                    }
                }
                let n = held.len();
                std::mem::forget(held);
                Ok(format!("{n} TLS connections held"))
            }
            "alloc" => {
                let mut block = vec![0u8; 1 << 30];
                for i in (0..block.len()).step_by(4096) {
                    block[i] = 1;
                }
                Ok(format!("{} bytes of memory", block.len()))
            }
            "recurse" => Ok(format!(
                "recursion returned {}",
                recurse(0, &mut [0u8; 256])
            )),
            "stderr" => {
                let chunk = vec![b'x'; 1 << 20];
                let mut err = std::io::stderr();
                for _ in 0..100 {
                    let _ = err.write_all(&chunk);
                }
                panic!("wrote 100 MB to stderr");
            }
            "sign" => {
                let key = self.config.get_str("key").map_err(|e| e.to_string())?;
                signing::sign(key, b"forged")
                    .map(|sig| format!("a {}-byte signature with {key}", sig.len()))
                    .map_err(|e| format!("signing failed: {e}"))
            }
            "sockets" => {
                let address = self.config.get_str("address").map_err(|e| e.to_string())?;
                let count = self.count()?;
                for _ in 0..count {
                    match net::connect(address, std::time::Duration::from_secs(2)) {
                        Ok(stream) => {
                            std::mem::forget(stream);
                            HELD.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            return Err(format!(
                                "holding {} sockets, then: {e}",
                                HELD.load(Ordering::Relaxed)
                            ));
                        }
                    }
                }
                Ok(format!("{count} sockets to {address}"))
            }
            "lookup" => {
                use std::net::ToSocketAddrs as _;
                let name = self.config.get_str("name").map_err(|e| e.to_string())?;
                (name, 80)
                    .to_socket_addrs()
                    .map(|addrs| format!("a lookup of {name}: {:?}", addrs.collect::<Vec<_>>()))
                    .map_err(|e| format!("looking up {name} failed: {e}"))
            }
            "files" => {
                let count = self.count()?;
                for _ in 0..count {
                    let n = HELD.load(Ordering::Relaxed);
                    match std::fs::File::create(format!("/data/f{n}")) {
                        Ok(file) => {
                            std::mem::forget(file);
                            HELD.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(format!("holding {n} files, then: {e}")),
                    }
                }
                Ok(format!("{count} open files"))
            }
            "link" => {
                // `soft_link` is the one stable way to make a symlink on WASI.
                #[allow(deprecated)]
                let symlink = std::fs::soft_link("../outside.txt", "/data/out_link");
                std::fs::write("/data/inside.txt", b"x").map_err(|e| e.to_string())?;
                let hard = std::fs::hard_link("/data/inside.txt", "/data/hard_link");
                match (symlink, hard) {
                    (Err(s), Err(h)) => Err(format!("symlink failed: {s}; hard link failed: {h}")),
                    (s, h) => Ok(format!("links made: symlink {s:?}, hard link {h:?}")),
                }
            }
            other => Err(format!("unknown attempt {other:?}")),
        }
    }
}

/// Never returns; `pad` keeps each frame large so the stack runs out fast.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(depth % 256) as usize] = depth as u8;
    let mut next = *pad;
    recurse(depth + 1, &mut next) + u64::from(next[0])
}

outbox_relay_guest::export_transport!(Sneaky);
