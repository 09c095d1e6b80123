//! What this client knows of the cluster: the brokers, each topic's
//! partitions and their leaders (from `Metadata`), and one connection per
//! broker. Metadata is asked for again when a leader may have moved
//! ([`Cluster::mark_stale`]); a broker that moved is reconnected.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::errors::code_name;
use crate::wire::{ConnError, Connection, Dial, Request};

/// One topic's partitions: the leader's node id of each, by index (`None`
/// while it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub leaders: Vec<Option<i32>>,
}

/// What metadata said of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Ready(Topic),
    /// The topic does not exist and was not created: messages to it are
    /// rejected, naming the code.
    Missing(String),
    /// Being created, electing a leader, or another passing state.
    Unavailable(String),
}

pub struct Cluster {
    bootstrap: Vec<String>,
    dial: Dial,
    allow_auto_create: bool,
    brokers: HashMap<i32, String>,
    conns: HashMap<i32, Connection>,
    /// A connection to a bootstrap address, until the brokers are known.
    seed: Option<Connection>,
    topics: HashMap<String, TopicState>,
    stale: bool,
    /// Metadata older than this is asked for again (a topic may have
    /// gained partitions, a leader may have moved without an error yet).
    max_age: Duration,
    /// When each topic's metadata was last read.
    fetched: HashMap<String, Instant>,
    /// No connect, read or write goes past it (the batch's end).
    deadline: Option<Instant>,
    /// At most this many broker connections are kept (each is a socket of
    /// the sandbox's `max_sockets`); the least recently used idle one goes.
    max_connections: usize,
    last_used: HashMap<i32, Instant>,
    /// Brokers with a request in flight in this round: never evicted.
    pinned: std::collections::HashSet<i32>,
    /// Brokers the sandbox refused, by address: not dialled again (nor
    /// metadata re-read for them) for [`DENIED_RETRY`].
    denied: HashMap<i32, (String, Instant, String)>,
}

/// How long a broker the sandbox refused is left alone.
const DENIED_RETRY: Duration = Duration::from_secs(10);

/// A start-up probe only asks the sandbox: its refusal is immediate.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

impl Cluster {
    pub fn new(
        bootstrap: Vec<String>,
        dial: Dial,
        allow_auto_create: bool,
        max_age: Duration,
        max_connections: usize,
    ) -> Cluster {
        Cluster {
            bootstrap,
            dial,
            allow_auto_create,
            brokers: HashMap::new(),
            conns: HashMap::new(),
            seed: None,
            topics: HashMap::new(),
            stale: true,
            max_age,
            fetched: HashMap::new(),
            deadline: None,
            max_connections: max_connections.max(1),
            last_used: HashMap::new(),
            pinned: Default::default(),
            denied: HashMap::new(),
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Marks `node` as having a request in flight: its connection is not
    /// evicted until [`Cluster::unpin_all`].
    pub fn pin(&mut self, node: i32) {
        self.pinned.insert(node);
    }

    pub fn unpin_all(&mut self) {
        self.pinned.clear();
    }

    /// Bounds every connect, read and write from now on (`None`: each
    /// request's own time-out only).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
        for conn in self.conns.values_mut().chain(self.seed.as_mut()) {
            conn.set_deadline(deadline);
        }
    }

    /// Asks the sandbox about every broker the metadata names: one it does
    /// not allow is an error (the target cannot work without it). Each probe
    /// is a TCP connect, closed at once and bounded by a fraction of a
    /// second: a broker that is down, slow or frozen does not hold up the
    /// start (its partitions wait for it), and no socket is kept.
    pub fn probe_all(&self) -> Result<(), ConnError> {
        let mut nodes: Vec<(&i32, &String)> = self.brokers.iter().collect();
        nodes.sort_unstable();
        for (node, addr) in nodes {
            match outbox_relay_guest::net::connect(addr, PROBE_TIMEOUT) {
                Ok(stream) => drop(stream),
                Err(e) if e.message().contains("sandbox does not allow") => {
                    return Err(ConnError::Denied(e.into_message()));
                }
                Err(e) => outbox_relay_guest::log::warn(&format!(
                    "Kafka broker {node} is not reachable at start-up: {e}"
                )),
            }
        }
        Ok(())
    }

    /// Asks for the brokers (and no topic): at start-up, this proves the
    /// addresses, the sandbox's permission and the login.
    pub fn discover(&mut self) -> Result<(), ConnError> {
        self.refresh(&[])
    }

    /// Metadata may be out of date: the next [`Cluster::topics`] asks again.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// The state of each of `names`, asking the cluster again for those not
    /// known yet or read longer than `metadata_max_age_ms` ago (or all of
    /// them, when stale).
    pub fn topics(&mut self, names: &[&str]) -> Result<Vec<TopicState>, ConnError> {
        let max_age = self.max_age;
        let mut due: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| {
                self.stale
                    || !matches!(self.topics.get(*n), Some(TopicState::Ready(_)))
                    || self
                        .fetched
                        .get(*n)
                        .is_none_or(|at| at.elapsed() >= max_age)
            })
            .collect();
        if self.stale || !due.is_empty() {
            due.sort_unstable();
            due.dedup();
            self.refresh(&due)?;
        }
        Ok(names
            .iter()
            .map(|n| {
                self.topics
                    .get(*n)
                    .cloned()
                    .unwrap_or_else(|| TopicState::Unavailable("no metadata for it".into()))
            })
            .collect())
    }

    /// A connection to broker `node`, opened if needed.
    pub fn conn(&mut self, node: i32) -> Result<&mut Connection, ConnError> {
        let Some(addr) = self.brokers.get(&node).cloned() else {
            self.stale = true;
            return Err(ConnError::Connect(format!(
                "broker {node} is not in the metadata"
            )));
        };
        if self.conns.get(&node).is_some_and(|c| c.addr() != addr) {
            self.conns.remove(&node); // the broker moved
        }
        if let Some((denied_addr, at, message)) = self.denied.get(&node) {
            if *denied_addr == addr && at.elapsed() < DENIED_RETRY {
                return Err(ConnError::Denied(message.clone()));
            }
            self.denied.remove(&node);
        }
        if !self.conns.contains_key(&node) {
            self.make_room();
            match Connection::open(&addr, &self.dial, self.deadline) {
                Ok(conn) => {
                    self.conns.insert(node, conn);
                }
                Err(ConnError::Denied(message)) => {
                    self.denied
                        .insert(node, (addr, Instant::now(), message.clone()));
                    return Err(ConnError::Denied(message));
                }
                Err(e) => return Err(e),
            }
        }
        self.last_used.insert(node, Instant::now());
        Ok(self.conns.get_mut(&node).expect("inserted above"))
    }

    /// Below `max_connections`, by closing the least recently used
    /// connection that has nothing in flight.
    fn make_room(&mut self) {
        while self.conns.len() >= self.max_connections {
            let idle = self
                .conns
                .keys()
                .filter(|n| !self.pinned.contains(n))
                .min_by_key(|n| self.last_used.get(n).copied())
                .copied();
            let Some(node) = idle else { return };
            self.conns.remove(&node);
        }
    }

    /// Forgets the connection to `node` after it failed. A broker the
    /// sandbox refused is not a sign of stale metadata.
    pub fn drop_conn(&mut self, node: i32, error: &ConnError) {
        self.conns.remove(&node);
        if !matches!(error, ConnError::Denied(_)) {
            self.stale = true;
        }
    }

    /// Any working connection: a broker's, else a bootstrap address's.
    pub fn any_conn(&mut self) -> Result<&mut Connection, ConnError> {
        if let Some(node) = self.conns.keys().next().copied() {
            return Ok(self.conns.get_mut(&node).expect("key just read"));
        }
        let mut nodes: Vec<i32> = self.brokers.keys().copied().collect();
        nodes.sort_unstable();
        let mut last = None;
        for node in nodes {
            match self.conn(node) {
                Ok(_) => return Ok(self.conns.get_mut(&node).expect("opened")),
                Err(e) => last = Some(e),
            }
        }
        if self.seed.is_none() {
            self.seed = Some(self.open_seed(last)?);
        }
        Ok(self.seed.as_mut().expect("set above"))
    }

    /// Sends `request` on [`Cluster::any_conn`]; a connection that fails is
    /// not used again.
    pub fn call_any<R: Request>(
        &mut self,
        request: &R,
        key: ApiKey,
    ) -> Result<R::Response, ConnError> {
        let answer = self.any_conn().and_then(|conn| {
            let version = conn.version(key);
            conn.call(request, version)
        });
        if answer.is_err() {
            self.conns.clear();
            self.seed = None;
            self.stale = true;
        }
        answer
    }

    fn open_seed(&self, last: Option<ConnError>) -> Result<Connection, ConnError> {
        let mut last = last;
        for addr in &self.bootstrap {
            match Connection::open(addr, &self.dial, self.deadline) {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnError::Connect("no bootstrap address".into())))
    }

    fn refresh(&mut self, names: &[&str]) -> Result<(), ConnError> {
        let request = MetadataRequest::default()
            .with_topics(Some(
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string((*n).to_owned()))))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(self.allow_auto_create);
        let answer = self.call_any(&request, ApiKey::Metadata)?;
        self.learn(answer);
        self.stale = false;
        Ok(())
    }

    fn learn(&mut self, answer: MetadataResponse) {
        self.brokers = answer
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let brokers = &self.brokers;
        self.conns
            .retain(|node, conn| brokers.get(node).is_some_and(|a| a == conn.addr()));
        if !self.brokers.is_empty() {
            self.seed = None;
        }
        for topic in answer.topics {
            let Some(name) = topic.name else { continue };
            let name = name.0.as_str().to_owned();
            let state = match topic.error_code {
                0 => {
                    let mut leaders = vec![None; topic.partitions.len()];
                    for p in &topic.partitions {
                        let leader = (p.leader_id.0 >= 0).then_some(p.leader_id.0);
                        if let Some(slot) = usize::try_from(p.partition_index)
                            .ok()
                            .and_then(|i| leaders.get_mut(i))
                        {
                            *slot = leader;
                        }
                    }
                    if leaders.is_empty() {
                        TopicState::Unavailable("the topic has no partitions".into())
                    } else {
                        TopicState::Ready(Topic { leaders })
                    }
                }
                // UNKNOWN_TOPIC_OR_PARTITION, INVALID_TOPIC_EXCEPTION,
                // TOPIC_AUTHORIZATION_FAILED
                code @ (3 | 17 | 29) => TopicState::Missing(code_name(code)),
                code => TopicState::Unavailable(code_name(code)),
            };
            self.fetched.insert(name.clone(), Instant::now());
            self.topics.insert(name, state);
        }
    }
}
