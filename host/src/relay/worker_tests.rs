//! Unit tests of the worker's duties, with an in-memory storage and a native
//! fake transport: no database, no wasm, a few milliseconds each. The
//! integration tests (`tests/it/`) cover the same paths on real databases.
//! It is the relay's one file over 500 lines, on purpose: the fakes and one
//! test per duty of the worker, kept together so a change to a duty shows
//! its test beside the others.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Semaphore, watch};

use super::delivery::tests::{Answer, Fake, spec};
use super::health::{Health, TargetHealth};
use super::pipeline::MAX_UNWRITTEN_BATCHES;
use super::worker::{PartitionWorker, State, Step};
use crate::config::RelaySettings;
use crate::message::{LogEntry, Message, NewMessage, Position};
use crate::relay::classify::tests::message;
use crate::routes::Routes;
use crate::storage::{
    Ack, DeadLetter, DeadLetterDetail, DeadLetterFilter, Disposition, DueRetry, FailureState,
    Lease, LiveRelay, Result, ServedTarget, Settlement, Storage, StorageError, TargetStatus,
    now_ms,
};

/// What the fake storage does with the next ack write.
#[derive(Debug, Clone, Copy)]
enum AckAnswer {
    Busy,
    DiskFull,
}

/// A one-partition log in memory, with one target's cursor, lease and
/// failure records.
#[derive(Default)]
struct Memory {
    log: Vec<Message>,
    cursor: Position,
    lease_owner: Option<String>,
    /// seq → (attempts, next attempt ms, dead)
    records: BTreeMap<i64, (u32, i64, bool)>,
    acks_written: u32,
    ack_script: VecDeque<AckAnswer>,
}

#[derive(Clone, Default)]
struct MemoryStorage {
    state: Arc<Mutex<Memory>>,
    /// When set, each ack write first takes a permit.
    gate: Option<Arc<Semaphore>>,
    /// How long each ack write takes before it commits.
    ack_delay: Duration,
}

impl MemoryStorage {
    fn with_log(n: i64, key: impl Fn(i64) -> Option<String>) -> Self {
        let storage = Self::default();
        storage.state.lock().unwrap().log = (1..=n)
            .map(|seq| message(seq, "e", key(seq).as_deref()))
            .collect();
        storage
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.state.lock().unwrap()
    }
}

fn unused<T>() -> Result<T> {
    Err(StorageError::Database(sqlx::Error::Protocol(
        "not used by the worker tests".into(),
    )))
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn migrate(&self) -> Result<()> {
        Ok(())
    }
    async fn ensure_partitions(&self, configured: u32) -> Result<u32> {
        Ok(configured)
    }
    async fn save(&self, _: &[NewMessage]) -> Result<()> {
        unused()
    }
    async fn acquire_lease(
        &self,
        target: &str,
        partition: u32,
        owner: &str,
        _: Duration,
    ) -> Result<Option<Lease>> {
        let mut m = self.memory();
        if m.lease_owner.as_deref().is_some_and(|o| o != owner) {
            return Ok(None);
        }
        m.lease_owner = Some(owner.into());
        Ok(Some(Lease {
            target: target.into(),
            partition,
            owner: owner.into(),
            position: m.cursor,
        }))
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut m = self.memory();
        if m.lease_owner.as_deref() == Some(&lease.owner) {
            m.lease_owner = None;
        }
        Ok(())
    }
    async fn fetch_pending(
        &self,
        _: u32,
        after: Position,
        limit: u32,
        _: usize,
    ) -> Result<Vec<LogEntry>> {
        Ok(self
            .memory()
            .log
            .iter()
            .filter(|m| m.position() > after)
            .take(limit as usize)
            .cloned()
            .map(Ok)
            .collect())
    }
    async fn mark_published(&self, lease: &Lease, ack: &Ack) -> Result<()> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if !self.ack_delay.is_zero() {
            tokio::time::sleep(self.ack_delay).await;
        }
        let mut m = self.memory();
        match m.ack_script.pop_front() {
            Some(AckAnswer::Busy) => {
                return Err(StorageError::Database(sqlx::Error::PoolTimedOut));
            }
            Some(AckAnswer::DiskFull) => {
                return Err(StorageError::Database(sqlx::Error::Protocol(
                    "database or disk is full".into(),
                )));
            }
            None => {}
        }
        if m.lease_owner.as_deref() != Some(&lease.owner) {
            return Err(StorageError::LeaseLost {
                target: lease.target.clone(),
                partition: lease.partition,
                owner: lease.owner.clone(),
            });
        }
        m.cursor = m.cursor.max(ack.position);
        m.acks_written += 1;
        for seq in &ack.resolved {
            m.records.remove(seq);
        }
        for f in &ack.failures {
            let (next, dead) = match f.disposition {
                Disposition::RetryAfter(d) => (now_ms() + d.as_millis() as i64, false),
                Disposition::Dead => (0, true),
            };
            m.records.insert(f.seq, (f.attempts, next, dead));
        }
        Ok(())
    }
    async fn claim_retries(
        &self,
        _: &str,
        _: &str,
        limit: u32,
        _: Duration,
    ) -> Result<Vec<DueRetry>> {
        let m = self.memory();
        let now = now_ms();
        Ok(m.records
            .iter()
            .filter(|(seq, (_, next, dead))| !dead && *next <= now && **seq <= m.cursor.seq)
            .take(limit as usize)
            .filter_map(|(seq, (attempts, _, _))| {
                let message = m.log.iter().find(|x| x.seq == *seq)?.clone();
                Some(DueRetry {
                    entry: Ok(message),
                    attempts: *attempts,
                })
            })
            .collect())
    }
    async fn settle_retries(&self, _: &str, settlements: &[Settlement]) -> Result<()> {
        let mut m = self.memory();
        for s in settlements {
            match s {
                Settlement::Delivered { seq } => {
                    m.records.remove(seq);
                }
                Settlement::Failed(f) => {
                    let (next, dead) = match f.disposition {
                        Disposition::RetryAfter(d) => (now_ms() + d.as_millis() as i64, false),
                        Disposition::Dead => (0, true),
                    };
                    m.records.insert(f.seq, (f.attempts, next, dead));
                }
            }
        }
        Ok(())
    }
    async fn status(&self, _: &[String]) -> Result<Vec<TargetStatus>> {
        unused()
    }
    async fn list_dead_letters(&self, _: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        unused()
    }
    async fn count_dead_letters(&self, _: &DeadLetterFilter) -> Result<u64> {
        unused()
    }
    async fn dead_letter(&self, _: &str, _: i64) -> Result<Option<DeadLetterDetail>> {
        unused()
    }
    async fn replay_dead_letters(&self, _: &str, _: &[i64]) -> Result<u64> {
        unused()
    }
    async fn purge_dead_letters(&self, _: &str, _: &[i64]) -> Result<u64> {
        unused()
    }
    async fn prune(&self, _: &[String], _: Duration, _: u32) -> Result<u64> {
        unused()
    }
    async fn heartbeat(
        &self,
        owner: &str,
        serving: &[ServedTarget],
        _: Duration,
    ) -> Result<Vec<LiveRelay>> {
        Ok(vec![LiveRelay {
            owner: owner.into(),
            targets: serving.to_vec(),
        }])
    }
    async fn registered_targets(&self) -> Result<Vec<String>> {
        unused()
    }
    async fn forget_target(&self, _: &str) -> Result<u64> {
        unused()
    }
    async fn leave(&self, _: &str) -> Result<()> {
        Ok(())
    }
    async fn failure_state(&self, _: &str, seq: i64) -> Result<Option<FailureState>> {
        Ok(self
            .memory()
            .records
            .get(&seq)
            .map(|(attempts, next, dead)| FailureState {
                attempts: *attempts,
                due_in: Duration::from_millis((*next - now_ms()).max(0) as u64),
                dead: *dead,
            }))
    }
}

struct Harness {
    worker: PartitionWorker,
    state: State,
    storage: MemoryStorage,
    fake: Fake,
    _channels: (watch::Sender<u64>, watch::Sender<Arc<Vec<String>>>),
}

fn harness(storage: MemoryStorage, fake: Fake, ordered: bool, batch_size: u32) -> Harness {
    harness_with_ttl(storage, fake, ordered, batch_size, Duration::from_secs(30))
}

fn harness_with_ttl(
    storage: MemoryStorage,
    fake: Fake,
    ordered: bool,
    batch_size: u32,
    lease_ttl: Duration,
) -> Harness {
    let (wake_tx, wake) = watch::channel(0);
    let (members_tx, members) = watch::channel(Arc::new(vec!["me".to_string()]));
    let mut target = spec(ordered);
    target.batch_size = batch_size;
    let settings = RelaySettings {
        lease_ttl,
        ..RelaySettings::default()
    };
    let worker = PartitionWorker {
        target: target.clone(),
        partition: 0,
        storage: Arc::new(storage.clone()),
        log: Arc::new(super::shared_reads::SharedLog::new(
            Arc::new(storage.clone()),
            1,
            1,
        )),
        transports: Arc::new(fake.clone()),
        routes: Arc::new(Routes::from_patterns([("t", ["*"].as_slice())]).unwrap()),
        settings: settings.clone(),
        owner: "me".into(),
        wake,
        members,
        health: Health::default(),
    };
    let state = State::new(&worker);
    Harness {
        worker,
        state,
        storage,
        fake,
        _channels: (wake_tx, members_tx),
    }
}

impl Harness {
    /// Steps until the worker would wait; returns the step it waits after.
    async fn drain(&mut self) -> Result<Step> {
        for _ in 0..10_000 {
            match self.worker.step(&mut self.state).await? {
                Step::Busy => continue,
                other => return Ok(other),
            }
        }
        panic!("the worker never went idle");
    }

    fn delivered(&self) -> Vec<i64> {
        self.fake.calls().into_iter().flatten().collect()
    }
}

#[tokio::test]
async fn an_ordered_one_key_backlog_drains_without_waiting_for_the_poll() {
    // Fewer rows than a batch: the fetch is not full, yet rows remain after the cut.
    let storage = MemoryStorage::with_log(25, |_| Some("k".into()));
    let mut h = harness(storage, Fake::default(), true, 100);
    assert_eq!(h.drain().await.unwrap(), Step::Idle);
    // One message per call (the cut before a repeated key), all in one drain.
    assert_eq!(h.delivered(), (1..=25).collect::<Vec<_>>());
    assert!(h.fake.calls().iter().all(|c| c.len() == 1));
    assert_eq!(h.storage.memory().cursor.seq, 25);
}

#[tokio::test]
async fn an_ordered_target_holds_at_a_failure_and_goes_on_once_it_is_delivered() {
    let storage = MemoryStorage::with_log(4, |seq| Some(format!("k{}", seq % 2)));
    let fake = Fake::answering([Answer::DeliverExcept(vec![2])]);
    let mut h = harness(storage, fake, true, 10);
    let held = h.drain().await.unwrap();
    assert!(matches!(held, Step::Hold(_)), "{held:?}");
    assert_eq!(
        h.storage.memory().cursor.seq,
        1,
        "the cursor stops before the retry"
    );
    assert!(matches!(
        h.worker.health.summary(&["t".into()])["t"],
        TargetHealth::Held { .. }
    ));
    // Make the held message due: it goes alone, then the rest.
    h.storage.memory().records.get_mut(&2).unwrap().1 = 0;
    assert_eq!(h.drain().await.unwrap(), Step::Idle);
    assert_eq!(h.delivered(), vec![1, 2, 2, 3, 4]);
    assert!(h.storage.memory().records.is_empty());
}

#[tokio::test]
async fn an_ordered_target_delivers_retries_behind_its_cursor() {
    // Left from a time the target was unordered, or a replayed dead letter.
    let storage = MemoryStorage::with_log(3, |_| None);
    {
        let mut m = storage.memory();
        m.cursor = Position { xid: 0, seq: 3 };
        m.records.insert(2, (1, 0, false));
    }
    let mut h = harness(storage, Fake::default(), true, 10);
    assert_eq!(h.drain().await.unwrap(), Step::Idle);
    assert_eq!(h.delivered(), vec![2]);
    assert!(h.storage.memory().records.is_empty());
}

#[tokio::test]
async fn a_transient_ack_failure_is_written_again_in_place_without_redelivery() {
    let storage = MemoryStorage::with_log(5, |_| None);
    storage.memory().ack_script = [AckAnswer::Busy, AckAnswer::Busy].into();
    let mut h = harness(storage, Fake::default(), false, 10);
    assert_eq!(h.drain().await.unwrap(), Step::Idle);
    assert_eq!(h.delivered(), vec![1, 2, 3, 4, 5]);
    assert_eq!(h.storage.memory().cursor.seq, 5);
}

#[tokio::test]
async fn a_failed_commit_keeps_the_ack_and_writes_it_before_delivering_more() {
    let storage = MemoryStorage::with_log(5, |_| None);
    storage.memory().ack_script = [AckAnswer::DiskFull, AckAnswer::DiskFull].into();
    let mut h = harness(storage, Fake::default(), false, 10);
    assert!(h.drain().await.is_err());
    assert!(h.drain().await.is_err(), "the disk is still full");
    assert_eq!(
        h.delivered(),
        vec![1, 2, 3, 4, 5],
        "nothing delivered again"
    );
    // Space is back: the kept ack is written, and the new rows follow.
    h.storage.memory().log.push(message(6, "e", None));
    assert_eq!(h.drain().await.unwrap(), Step::Idle);
    assert_eq!(h.delivered(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(h.storage.memory().cursor.seq, 6);
}

#[tokio::test]
async fn at_most_eight_batches_are_unacknowledged_behind_a_slow_write() {
    let mut storage = MemoryStorage::with_log(200, |_| None);
    let gate = Arc::new(Semaphore::new(0));
    storage.gate = Some(gate.clone());
    let mut h = harness(storage, Fake::default(), false, 10);
    let fake = h.fake.clone();
    let stepping = tokio::spawn(async move {
        let step = h.worker.step(&mut h.state).await;
        (h, step)
    });
    // The first write never finishes until the gate opens.
    let started = Instant::now();
    let mut seen = 0;
    while started.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = fake.calls().len();
    }
    assert_eq!(seen as u32, MAX_UNWRITTEN_BATCHES);
    gate.add_permits(1000);
    let (mut h, step) = stepping.await.unwrap();
    step.unwrap();
    assert_eq!(h.drain().await.unwrap(), Step::Idle);
    assert_eq!(
        h.delivered(),
        (1..=200).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert!(
        h.storage.memory().acks_written < 200 / 10,
        "acks were merged"
    );
}

#[tokio::test]
async fn a_worker_paused_past_its_lease_delivers_nothing_it_held() {
    let storage = MemoryStorage::with_log(30, |_| None);
    let mut h = harness(storage, Fake::default(), false, 10);
    assert_eq!(h.drain().await.unwrap(), Step::Idle);
    let before = h.delivered().len();
    assert_eq!(before, 30);
    h.storage
        .memory()
        .log
        .extend((31..=40).map(|seq| message(seq, "e", None)));
    // A pause: the lease was last renewed a whole TTL ago, and another
    // relay took it meanwhile.
    h.state.held.renewed_at = Some(Instant::now() - Duration::from_secs(31));
    h.storage.memory().lease_owner = Some("other".into());
    assert_eq!(h.worker.step(&mut h.state).await.unwrap(), Step::Idle);
    assert_eq!(
        h.delivered().len(),
        before,
        "nothing delivered after the pause"
    );
    assert!(h.state.held.lease.is_none());
}

#[tokio::test]
async fn a_worker_whose_cursor_moved_while_it_was_away_starts_over_from_it() {
    let storage = MemoryStorage::with_log(30, |_| None);
    let mut h = harness(storage, Fake::default(), true, 10);
    assert_eq!(h.worker.step(&mut h.state).await.unwrap(), Step::Busy);
    let before = h.delivered();
    // Away past the lease: another relay delivered up to 20 and let go.
    h.state.held.renewed_at = Some(Instant::now() - Duration::from_secs(31));
    h.storage.memory().cursor = Position { xid: 0, seq: 20 };
    assert_eq!(h.worker.step(&mut h.state).await.unwrap(), Step::Idle);
    assert_eq!(h.delivered(), before, "nothing stale delivered");
    assert_eq!(h.drain().await.unwrap(), Step::Idle);
    let after: Vec<i64> = h.delivered()[before.len()..].to_vec();
    assert_eq!(
        after,
        (21..=30).collect::<Vec<_>>(),
        "from the moved cursor on"
    );
}

/// Renewals in the middle of backlogs, with acks in flight across batches:
/// each message once, in order, and the worker never stops short (a cursor
/// its own unjoined write moved is not "moved while away").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_during_backlogs_delivers_each_once_and_never_stops_short() {
    let mut storage = MemoryStorage::with_log(2_000, |_| None);
    // Writes stay in flight across batches, and commit between two of them;
    // the lease is due for renewal every 5 ms, so in the middle of backlogs.
    storage.ack_delay = Duration::from_millis(3);
    let fake = Fake {
        delay: Duration::from_millis(1),
        ..Fake::default()
    };
    let mut h = harness_with_ttl(storage, fake, false, 10, Duration::from_millis(20));
    let mut steps = 0;
    loop {
        steps += 1;
        match h.worker.step(&mut h.state).await.unwrap() {
            Step::Busy => {}
            Step::Idle => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        h.delivered(),
        (1..=2_000).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert!(
        h.delivered().len() == 2_000 && h.storage.memory().cursor.seq == 2_000,
        "drained before going idle ({steps} steps)"
    );
}

#[tokio::test]
async fn a_plugin_that_cannot_start_stalls_the_target_and_says_why() {
    let storage = MemoryStorage::with_log(3, |_| None);
    let fake = Fake {
        otherwise: Some(Answer::CannotStart),
        ..Fake::default()
    };
    let mut h = harness(storage, fake, false, 10);
    assert_eq!(h.worker.step(&mut h.state).await.unwrap(), Step::Stalled);
    assert_eq!(h.storage.memory().cursor.seq, 0);
    assert!(h.storage.memory().records.is_empty(), "no attempt charged");
    let TargetHealth::CannotStart { reason, .. } = &h.worker.health.summary(&["t".into()])["t"]
    else {
        panic!("not reported")
    };
    assert!(reason.contains("bad config"), "{reason}");
}
