//! Producing one batch: records grouped by partition, one `Produce` request
//! per leader per round, each partition's outcome from its own answer, and
//! the idempotent producer's session (producer id, epoch, a sequence number
//! per partition).
//!
//! A round sends the first chunk of every partition that still has records
//! (at most one request in flight per partition, so a key's records stay in
//! order). Records that were perhaps written (no answer, a time-out) are sent
//! again with the same sequence numbers, so the broker keeps one copy. When
//! the batch's time is up, what is left is handed back as retries; if any of
//! it was perhaps written, the session ends, so that its sequence numbers
//! are never reused for other records (the next batch starts a new session
//! with `InitProducerId`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use outbox_relay_guest::Outcome;

use crate::cluster::{Cluster, TopicState};
use crate::errors::{Verdict, code_name, verdict};
use crate::placement::{self, Placement};
use crate::session::{Session, init_producer_id, produce_request};

/// One message, encoded, with its place in the batch.
#[derive(Debug, Clone)]
pub struct Message {
    pub index: usize,
    pub topic: String,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(StrBytes, Bytes)>,
    pub timestamp_ms: i64,
    pub placement: Placement,
}

impl Message {
    fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum();
        self.key.as_ref().map_or(0, Bytes::len) + self.value.len() + headers + 24
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub acks: i16,
    pub idempotent: bool,
    pub request_timeout: Duration,
    pub delivery_timeout: Duration,
    pub max_batch_bytes: usize,
    pub retry_backoff: Duration,
}

pub struct Producer {
    settings: Settings,
    session: Option<Session>,
    sticky: u64,
    /// Which leaders a round with more than `max_connections` starts at.
    rotation: usize,
}

pub(crate) type Tp = (String, i32);

/// What one `send` keeps across its rounds.
#[derive(Default)]
struct Batch {
    /// Positions in `messages` still to send, by partition, in order.
    queues: BTreeMap<Tp, Vec<usize>>,
    /// Outcomes so far, by the envelope's index.
    outcomes: Vec<(usize, Outcome)>,
    /// The last failure of each position, for its retry's reason.
    reason: HashMap<usize, String>,
    /// Partitions whose first chunk may have been written without an answer.
    perhaps_written: HashSet<Tp>,
    /// A smaller chunk after MESSAGE_TOO_LARGE.
    chunk_limit: HashMap<Tp, usize>,
    /// The broker's throttle time, when it throttled.
    throttle_ms: i32,
}

/// One partition's records of a round.
pub(crate) struct Chunk {
    pub tp: Tp,
    /// Positions in `messages`.
    pub members: Vec<usize>,
}

impl Producer {
    pub fn new(settings: Settings) -> Producer {
        Producer {
            settings,
            session: None,
            sticky: outbox_relay_guest::random::u64(),
            rotation: 0,
        }
    }

    /// Starts the producer session now (at start-up, to prove it works).
    pub fn start_session(&mut self, cluster: &mut Cluster) -> Result<(), String> {
        if self.settings.idempotent && self.session.is_none() {
            self.session = Some(init_producer_id(cluster)?);
        }
        Ok(())
    }

    /// Sends `messages` and returns an outcome for each, by `index`.
    pub fn send(&mut self, cluster: &mut Cluster, messages: Vec<Message>) -> Vec<(usize, Outcome)> {
        let deadline = Instant::now() + self.settings.delivery_timeout;
        // Every connect, read and write of this batch ends by then.
        cluster.set_deadline(Some(deadline));
        let mut batch = Batch::default();
        let mut unplaced: Vec<usize> = (0..messages.len()).collect();
        let mut rounds = 0u32;
        self.sticky = self.sticky.wrapping_add(1);

        loop {
            if !unplaced.is_empty() {
                unplaced = placement::place(
                    self.sticky,
                    cluster,
                    &messages,
                    unplaced,
                    &mut batch.queues,
                    &mut batch.outcomes,
                    &mut batch.reason,
                );
            }
            batch.queues.retain(|_, q| !q.is_empty());
            if batch.queues.is_empty() && unplaced.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            if self.settings.idempotent && self.session.is_none() {
                match init_producer_id(cluster) {
                    Ok(session) => self.session = Some(session),
                    Err(e) => {
                        for &m in batch.queues.values().flatten() {
                            batch.reason.insert(m, e.clone());
                        }
                        pause(self.settings.retry_backoff, deadline);
                        continue;
                    }
                }
            }
            rounds += 1;
            let progressed = if batch.queues.is_empty() {
                false
            } else {
                self.round(cluster, &messages, &mut batch)
            };
            if batch.throttle_ms > 0 {
                break;
            }
            if !progressed {
                pause(self.settings.retry_backoff, deadline);
            }
        }

        cluster.set_deadline(None);
        // What is left goes back to the host as retries.
        let Batch {
            queues,
            mut outcomes,
            mut reason,
            perhaps_written,
            throttle_ms,
            ..
        } = batch;
        let left: Vec<usize> = queues.values().flatten().copied().chain(unplaced).collect();
        if !left.is_empty() && !perhaps_written.is_empty() {
            // Perhaps written, with sequence numbers the broker may hold:
            // never reuse them for other records.
            self.session = None;
        }
        for m in left {
            let why = reason.remove(&m).unwrap_or_else(|| {
                format!("not sent: the batch took {rounds} rounds and its time ran out")
            });
            let why = format!(
                "Kafka: {why} (gave up after delivery_timeout_ms = {})",
                self.settings.delivery_timeout.as_millis()
            );
            outcomes.push((
                messages[m].index,
                if throttle_ms > 0 {
                    Outcome::retry_after(why, throttle_ms as u64)
                } else {
                    Outcome::retry(why)
                },
            ));
        }
        outcomes
    }

    /// One round: the first chunk of every queue, one request per leader.
    /// Returns whether any record got an outcome.
    fn round(&mut self, cluster: &mut Cluster, messages: &[Message], batch: &mut Batch) -> bool {
        // Chunks by leader.
        let names: Vec<&str> = batch.queues.keys().map(|(t, _)| t.as_str()).collect();
        let states = match cluster.topics(&names) {
            Ok(states) => states,
            Err(e) => {
                let why = format!("cannot read metadata: {e}");
                for &m in batch.queues.values().flatten() {
                    batch.reason.insert(m, why.clone());
                }
                return false;
            }
        };
        let leaders: HashMap<&str, &TopicState> =
            names.iter().copied().zip(states.iter()).collect();
        let mut by_leader: BTreeMap<i32, Vec<Chunk>> = BTreeMap::new();
        for (tp, queue) in batch.queues.iter() {
            let leader = match leaders.get(tp.0.as_str()) {
                Some(TopicState::Ready(t)) => t.leaders.get(tp.1 as usize).copied().flatten(),
                _ => None,
            };
            let Some(leader) = leader else {
                for &m in queue {
                    batch
                        .reason
                        .insert(m, format!("partition {} of {:?} has no leader", tp.1, tp.0));
                }
                cluster.mark_stale();
                continue;
            };
            let limit = batch.chunk_limit.get(tp).copied().unwrap_or(usize::MAX);
            let mut size = 0;
            let mut members = Vec::new();
            for &m in queue.iter().take(limit) {
                size += messages[m].size();
                if !members.is_empty() && size > self.settings.max_batch_bytes {
                    break;
                }
                members.push(m);
            }
            by_leader.entry(leader).or_default().push(Chunk {
                tp: tp.clone(),
                members,
            });
        }

        // Send every request, then read every answer: to at most
        // `max_connections` leaders a round (the others wait for the next
        // round, starting elsewhere each time), so the connections in flight
        // fit the sandbox's sockets.
        let leaders: Vec<i32> = by_leader.keys().copied().collect();
        let limit = cluster.max_connections();
        if leaders.len() > limit {
            self.rotation = self.rotation.wrapping_add(1);
            let start = self.rotation % leaders.len();
            let chosen: Vec<i32> = (0..limit)
                .map(|i| leaders[(start + i) % leaders.len()])
                .collect();
            by_leader.retain(|leader, _| chosen.contains(leader));
        }
        let mut sent: Vec<(i32, i32, i16, Vec<Chunk>)> = Vec::new();
        for (leader, chunks) in by_leader {
            let request = produce_request(&self.settings, self.session.as_ref(), messages, &chunks);
            cluster.pin(leader);
            let result = cluster.conn(leader).and_then(|conn| {
                let version = conn.version(ApiKey::Produce);
                conn.send(&request, version).map(|c| (c, version))
            });
            match result {
                Ok((correlation, version)) => sent.push((leader, correlation, version, chunks)),
                Err(e) => {
                    let written = e.is_io();
                    cluster.drop_conn(leader, &e);
                    for chunk in &chunks {
                        if written {
                            batch.perhaps_written.insert(chunk.tp.clone());
                        }
                        for &m in &chunk.members {
                            batch.reason.insert(m, format!("broker {leader}: {e}"));
                        }
                    }
                }
            }
        }
        let mut progressed = false;
        for (leader, correlation, version, chunks) in sent {
            let answer = cluster
                .conn(leader)
                .and_then(|conn| conn.receive::<ProduceRequest>(correlation, version));
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    cluster.drop_conn(leader, &e);
                    for chunk in &chunks {
                        batch.perhaps_written.insert(chunk.tp.clone());
                        for &m in &chunk.members {
                            batch.reason.insert(m, format!("broker {leader}: {e}"));
                        }
                    }
                    continue;
                }
            };
            for chunk in chunks {
                progressed |= self.settle(cluster, messages, &answer, chunk, batch);
            }
        }
        cluster.unpin_all();
        progressed
    }

    /// Applies one partition's answer to its chunk.
    fn settle(
        &mut self,
        cluster: &mut Cluster,
        messages: &[Message],
        answer: &ProduceResponse,
        chunk: Chunk,
        batch: &mut Batch,
    ) -> bool {
        let Batch {
            queues,
            outcomes,
            reason,
            perhaps_written,
            chunk_limit,
            throttle_ms,
        } = batch;
        let tp = chunk.tp.clone();
        let partition = answer
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == tp.0)
            .flat_map(|t| &t.partition_responses)
            .find(|p| p.index == tp.1);
        let Some(partition) = partition else {
            for &m in &chunk.members {
                reason.insert(
                    m,
                    format!(
                        "the broker's answer left out partition {} of {:?}",
                        tp.1, tp.0
                    ),
                );
            }
            perhaps_written.insert(tp);
            return false;
        };
        let code = partition.error_code;
        let detail = match &partition.error_message {
            Some(m) if !m.is_empty() => format!("{}: {}", code_name(code), m.as_str()),
            _ => code_name(code),
        };
        let queue = queues.get_mut(&tp).expect("a chunk comes from a queue");
        let mut take = |outcomes: &mut Vec<(usize, Outcome)>,
                        outcome: &dyn Fn(usize) -> Outcome| {
            for &m in &chunk.members {
                outcomes.push((messages[m].index, outcome(m)));
            }
            queue.drain(..chunk.members.len());
        };
        match verdict(code) {
            Verdict::Written => {
                take(outcomes, &|_| Outcome::Delivered);
                if let Some(session) = &mut self.session {
                    let next = session.next_sequence.entry(tp.clone()).or_insert(0);
                    *next = next.wrapping_add(chunk.members.len() as i32) & i32::MAX;
                }
                perhaps_written.remove(&tp);
                chunk_limit.remove(&tp);
                true
            }
            Verdict::Reject => {
                let named: HashMap<usize, String> = partition
                    .record_errors
                    .iter()
                    .filter_map(|e| {
                        let m = *chunk.members.get(usize::try_from(e.batch_index).ok()?)?;
                        let message = e
                            .batch_index_error_message
                            .as_ref()
                            .map(|s| s.as_str().to_owned());
                        Some((m, message.unwrap_or_default()))
                    })
                    .collect();
                if named.is_empty() {
                    take(outcomes, &|_| {
                        Outcome::reject(format!("Kafka: the broker refused the record: {detail}"))
                    });
                } else {
                    // Only the records named are bad; the others were not
                    // written either and go again.
                    for (&m, why) in &named {
                        outcomes.push((
                            messages[m].index,
                            Outcome::reject(format!(
                                "Kafka: the broker refused the record: {detail} {why}"
                            )),
                        ));
                    }
                    queue.retain(|m| !named.contains_key(m));
                }
                true
            }
            Verdict::TooLarge if chunk.members.len() > 1 => {
                chunk_limit.insert(tp, chunk.members.len() / 2);
                false
            }
            Verdict::TooLarge => {
                take(outcomes, &|_| {
                    Outcome::reject(format!(
                        "Kafka: the record is too large for the broker: {detail}"
                    ))
                });
                true
            }
            Verdict::NotWritten { refresh } => {
                if refresh {
                    cluster.mark_stale();
                }
                for &m in &chunk.members {
                    reason.insert(m, detail.clone());
                }
                false
            }
            Verdict::Unknown => {
                perhaps_written.insert(tp);
                for &m in &chunk.members {
                    reason.insert(m, detail.clone());
                }
                false
            }
            Verdict::NewSession => {
                self.session = None;
                for &m in &chunk.members {
                    reason.insert(m, detail.clone());
                }
                false
            }
            Verdict::Throttled => {
                *throttle_ms = answer.throttle_time_ms.max(1);
                for &m in &chunk.members {
                    reason.insert(m, detail.clone());
                }
                false
            }
        }
    }
}

fn pause(backoff: Duration, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep(backoff.min(left));
}
