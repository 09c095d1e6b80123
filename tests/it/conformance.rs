//! The storage conformance suite: every backend passes the same cases, which
//! cover what the seed's storage tests checked and more.

use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::message::Position;
use outbox_relay::producer;
use outbox_relay::storage::{
    Ack, Disposition, Failure, ServedTarget, Settlement, Storage, StorageError,
};
use outbox_relay_tests::{Scratch, enqueue};

const T: &str = "target-a";

fn retry_now(seq: i64, id: &str, attempts: u32) -> Failure {
    Failure {
        seq,
        message_id: id.to_string(),
        attempts,
        error: format!("failure {attempts}"),
        disposition: Disposition::RetryAfter(Duration::ZERO),
    }
}

async fn lease(storage: &dyn Storage, owner: &str) -> outbox_relay::storage::Lease {
    storage
        .acquire_lease(T, 0, owner, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the lease is free")
}

/// Enqueues, then waits until no older open transaction (of another test on
/// the same Postgres server: transaction ids are cluster-wide) hides the rows.
async fn enqueue_settled(storage: &dyn Storage, n: usize) -> Vec<NewMessage> {
    let sent = enqueue(storage, "e", n).await;
    let start = std::time::Instant::now();
    while storage.has_unsettled(0, Position::default()).await.unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rows stayed hidden for a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sent
}

fn ids(entries: &[outbox_relay::message::LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.as_ref().unwrap().id.to_string())
        .collect()
}

async fn only_pending_messages_come_back(storage: &dyn Storage) {
    let sent = enqueue_settled(storage, 5).await;
    let l = lease(storage, "a").await;
    let all = storage
        .fetch_pending(0, l.position, 100, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        ids(&all),
        sent.iter().map(|m| m.id.to_string()).collect::<Vec<_>>()
    );
    let third = all[2].as_ref().unwrap().position();
    storage
        .mark_published(
            &l,
            &Ack {
                position: third,
                failures: vec![],
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    let l = lease(storage, "a").await;
    assert_eq!(l.position, third);
    let rest = storage
        .fetch_pending(0, l.position, 100, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        ids(&rest),
        sent[3..]
            .iter()
            .map(|m| m.id.to_string())
            .collect::<Vec<_>>()
    );
}

async fn the_batch_limit_is_exact(storage: &dyn Storage) {
    enqueue_settled(storage, 10).await;
    for (limit, expected) in [(1, 1), (4, 4), (10, 10), (20, 10)] {
        let got = storage
            .fetch_pending(0, Position::default(), limit, usize::MAX)
            .await
            .unwrap();
        assert_eq!(got.len(), expected, "limit {limit}");
    }
}

async fn an_ack_is_kept(storage: &dyn Storage) {
    enqueue_settled(storage, 3).await;
    let l = lease(storage, "a").await;
    let all = storage
        .fetch_pending(0, l.position, 100, usize::MAX)
        .await
        .unwrap();
    let last = all[2].as_ref().unwrap().position();
    storage
        .mark_published(
            &l,
            &Ack {
                position: last,
                failures: vec![],
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    storage.release_lease(&l).await.unwrap();
    // Another relay, taking over, starts where the first one acknowledged.
    let other = lease(storage, "b").await;
    assert_eq!(other.position, last);
    assert!(
        storage
            .fetch_pending(0, other.position, 100, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn the_retry_count_rises(storage: &dyn Storage) {
    let sent = enqueue_settled(storage, 1).await;
    let l = lease(storage, "a").await;
    let entry = storage
        .fetch_pending(0, l.position, 10, usize::MAX)
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let id = sent[0].id.to_string();
    storage
        .mark_published(
            &l,
            &Ack {
                position: entry.position(),
                failures: vec![retry_now(entry.seq, &id, 1)],
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    for attempts in 1..4 {
        let due = storage
            .claim_retries(T, "a", 10, Duration::from_millis(1))
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].attempts, attempts);
        assert_eq!(due[0].entry.as_ref().unwrap().id, sent[0].id);
        storage
            .settle_retries(
                T,
                &[Settlement::Failed(retry_now(entry.seq, &id, attempts + 1))],
            )
            .await
            .unwrap();
    }
    let status = storage.status(&[T.to_string()]).await.unwrap();
    assert_eq!(status[0].retries_pending, 1);
    // Delivered at last: the record goes.
    let due = storage
        .claim_retries(T, "a", 10, Duration::from_secs(1))
        .await
        .unwrap();
    storage
        .settle_retries(
            T,
            &[Settlement::Delivered {
                seq: due[0].entry.as_ref().unwrap().seq,
            }],
        )
        .await
        .unwrap();
    let status = storage.status(&[T.to_string()]).await.unwrap();
    assert_eq!((status[0].retries_pending, status[0].dead_letters), (0, 0));
}

async fn exhausted_messages_do_not_come_back(storage: &dyn Storage) {
    let sent = enqueue_settled(storage, 2).await;
    let l = lease(storage, "a").await;
    let entries = storage
        .fetch_pending(0, l.position, 10, usize::MAX)
        .await
        .unwrap();
    let (a, b) = (entries[0].as_ref().unwrap(), entries[1].as_ref().unwrap());
    storage
        .mark_published(
            &l,
            &Ack {
                position: b.position(),
                failures: vec![
                    retry_now(a.seq, &sent[0].id.to_string(), 1),
                    retry_now(b.seq, &sent[1].id.to_string(), 1),
                ],
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    let mut dead = retry_now(a.seq, &sent[0].id.to_string(), 2);
    dead.disposition = Disposition::Dead;
    storage
        .settle_retries(T, &[Settlement::Failed(dead)])
        .await
        .unwrap();
    let due = storage
        .claim_retries(T, "a", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "the dead one does not come back");
    assert_eq!(due[0].entry.as_ref().unwrap().id, sent[1].id);
    let letters = outbox_relay_tests::dead_letters(storage, T).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id, sent[0].id.to_string());
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(letters[0].event_name.as_deref(), Some("e"));
}

async fn a_claimed_batch_is_invisible_to_a_second_relay(storage: &dyn Storage) {
    let sent = enqueue_settled(storage, 3).await;
    let l = lease(storage, "a").await;
    // The lease: a second relay cannot take a held partition.
    assert!(
        storage
            .acquire_lease(T, 0, "b", Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );
    let entries = storage
        .fetch_pending(0, l.position, 10, usize::MAX)
        .await
        .unwrap();
    let failures = entries
        .iter()
        .zip(&sent)
        .map(|(e, m)| retry_now(e.as_ref().unwrap().seq, &m.id.to_string(), 1))
        .collect();
    let last = entries[2].as_ref().unwrap().position();
    storage
        .mark_published(
            &l,
            &Ack {
                position: last,
                failures,
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    // The retries: what one relay claimed, another does not see.
    let first = storage
        .claim_retries(T, "a", 2, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let second = storage
        .claim_retries(T, "b", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    let a_seqs: Vec<i64> = first
        .iter()
        .map(|d| d.entry.as_ref().unwrap().seq)
        .collect();
    assert!(!a_seqs.contains(&second[0].entry.as_ref().unwrap().seq));
    assert!(
        storage
            .claim_retries(T, "c", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn an_expired_claim_is_taken_over(storage: &dyn Storage) {
    let sent = enqueue_settled(storage, 1).await;
    let l = storage
        .acquire_lease(T, 0, "a", Duration::from_millis(1000))
        .await
        .unwrap()
        .unwrap();
    let entry = storage
        .fetch_pending(0, l.position, 10, usize::MAX)
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    storage
        .mark_published(
            &l,
            &Ack {
                position: entry.position(),
                failures: vec![retry_now(entry.seq, &sent[0].id.to_string(), 1)],
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        storage
            .claim_retries(T, "a", 10, Duration::from_millis(1000))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        storage
            .claim_retries(T, "b", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    // A live lease is not taken. (On SQLite b judges a's lease by watching
    // it go unrenewed for its TTL, from this look on; on Postgres by the
    // server's clock.)
    assert!(
        storage
            .acquire_lease(T, 0, "b", Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );
    // (A second of TTL: a loaded box may take hundreds of ms between steps.)
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Both the retry claim and the partition lease have expired: b takes over.
    assert_eq!(
        storage
            .claim_retries(T, "b", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        1
    );
    let taken = storage
        .acquire_lease(T, 0, "b", Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(taken.map(|l| l.position), Some(entry.position()));
    // The old owner's late ack is refused.
    let late = storage
        .mark_published(
            &l,
            &Ack {
                position: entry.position(),
                failures: vec![],
                resolved: vec![],
            },
        )
        .await;
    assert!(
        matches!(late, Err(StorageError::LeaseLost { .. })),
        "{late:?}"
    );
}

async fn retention_prunes_only_what_every_target_passed_and_nothing_refers_to(
    storage: &dyn Storage,
) {
    let sent = enqueue_settled(storage, 4).await;
    let entries = storage
        .fetch_pending(0, Position::default(), 10, usize::MAX)
        .await
        .unwrap();
    let pos = |i: usize| entries[i].as_ref().unwrap().position();
    let a = lease(storage, "a").await;
    storage
        .mark_published(
            &a,
            &Ack {
                position: pos(2),
                failures: vec![retry_now(
                    entries[1].as_ref().unwrap().seq,
                    &sent[1].id.to_string(),
                    1,
                )],
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    let b = storage
        .acquire_lease("target-b", 0, "a", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    storage
        .mark_published(
            &b,
            &Ack {
                position: pos(3),
                failures: vec![],
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    let targets = [T.to_string(), "target-b".to_string()];
    assert_eq!(
        storage
            .prune(&targets, Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0,
        "nothing is old enough"
    );
    // Every message is older than a retention of zero, by the database's clock.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let later = Duration::ZERO;
    // A target that never ran has passed nothing.
    let with_new = [
        T.to_string(),
        "target-b".to_string(),
        "never-ran".to_string(),
    ];
    assert_eq!(storage.prune(&with_new, later, 100).await.unwrap(), 0);
    assert_eq!(
        storage.prune(&targets, later, 1).await.unwrap(),
        1,
        "bounded batches"
    );
    assert_eq!(storage.prune(&targets, later, 100).await.unwrap(), 1);
    assert_eq!(storage.prune(&targets, later, 100).await.unwrap(), 0);
    // Left: the one a failure record refers to, and the one target-a has not passed.
    let left = storage
        .fetch_pending(0, Position::default(), 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(ids(&left), [sent[1].id.to_string(), sent[3].id.to_string()]);
}

async fn the_registry_holds_retention_until_a_target_is_forgotten(storage: &dyn Storage) {
    enqueue_settled(storage, 3).await;
    let ttl = Duration::from_secs(60);
    let states = |names: &[&str]| -> Vec<ServedTarget> {
        names.iter().map(|n| ServedTarget::running(*n)).collect()
    };
    storage.heartbeat("a", &states(&[T]), ttl).await.unwrap();
    let mut held = ServedTarget::running("target-b");
    held.state = serde_json::json!({"state": "cannot start", "reason": "boom"});
    let live = storage
        .heartbeat("b", &[ServedTarget::running(T), held.clone()], ttl)
        .await
        .unwrap();
    assert_eq!(
        live.iter().map(|r| r.owner.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(live[1].targets[1], held);
    assert_eq!(storage.registered_targets().await.unwrap(), [T, "target-b"]);
    let status = storage
        .status(&[T.to_string(), "target-b".to_string()])
        .await
        .unwrap();
    assert_eq!(status[0].served_by.len(), 2);
    assert_eq!(status[1].served_by[0].state["reason"], "boom");
    assert!(!status[1].holds_back_retention());

    // target-a passes everything; target-b, registered, has passed nothing.
    let l = lease(storage, "a").await;
    let all = storage
        .fetch_pending(0, l.position, 10, usize::MAX)
        .await
        .unwrap();
    storage
        .mark_published(
            &l,
            &Ack {
                position: all[2].as_ref().unwrap().position(),
                failures: vec![],
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        storage
            .prune(&[T.to_string()], Duration::ZERO, 100)
            .await
            .unwrap(),
        0,
        "a registered target that is not in this relay's config still holds retention"
    );
    assert!(matches!(
        storage.forget_target("target-b").await,
        Err(StorageError::TargetServed { .. })
    ));
    storage.leave("b").await.unwrap();
    let status = storage.status(&["target-b".to_string()]).await.unwrap();
    assert!(status[0].holds_back_retention());
    assert_eq!(status[0].lag, 3);
    assert!(matches!(
        storage.forget_target("nosuch").await,
        Err(StorageError::UnknownTarget(_))
    ));
    storage.forget_target("target-b").await.unwrap();
    assert_eq!(storage.registered_targets().await.unwrap(), [T]);
    assert_eq!(
        storage
            .prune(&[T.to_string()], Duration::ZERO, 100)
            .await
            .unwrap(),
        3
    );
}

async fn dead_letters_filter_by_error_page_and_count(storage: &dyn Storage) {
    let sent = enqueue_settled(storage, 7).await;
    let l = lease(storage, "a").await;
    let entries = storage
        .fetch_pending(0, l.position, 10, usize::MAX)
        .await
        .unwrap();
    let failures = entries
        .iter()
        .zip(&sent)
        .map(|(e, m)| Failure {
            seq: e.as_ref().unwrap().seq,
            message_id: m.id.to_string(),
            attempts: 1,
            error: if e.as_ref().unwrap().seq % 2 == 0 {
                "HTTP 503 from the Receiver".into()
            } else {
                "connection refused".into()
            },
            disposition: Disposition::Dead,
        })
        .collect();
    storage
        .mark_published(
            &l,
            &Ack {
                position: entries.last().unwrap().as_ref().unwrap().position(),
                failures,
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    let all = outbox_relay::storage::DeadLetterFilter::default();
    assert_eq!(storage.count_dead_letters(&all).await.unwrap(), 7);
    let receiver = outbox_relay::storage::DeadLetterFilter {
        error_contains: Some("503 FROM THE receiver".into()),
        ..Default::default()
    };
    let even = storage.list_dead_letters(&receiver).await.unwrap();
    assert!(
        !even.is_empty() && even.iter().all(|d| d.seq % 2 == 0),
        "{even:?}"
    );
    assert_eq!(
        storage.count_dead_letters(&receiver).await.unwrap(),
        even.len() as u64
    );
    // Pages of 3, newest first, cover the listing once, in its order.
    let whole = storage.list_dead_letters(&all).await.unwrap();
    let mut paged = Vec::new();
    let mut page = outbox_relay::storage::DeadLetterFilter {
        limit: 3,
        ..Default::default()
    };
    loop {
        let got = storage.list_dead_letters(&page).await.unwrap();
        if got.is_empty() {
            break;
        }
        page.older_than = Some(got.last().unwrap().key());
        paged.extend(got);
    }
    assert_eq!(paged, whole);
    let other = outbox_relay::storage::DeadLetterFilter {
        target: Some("no-such-target".into()),
        ..Default::default()
    };
    assert_eq!(storage.count_dead_letters(&other).await.unwrap(), 0);
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let scratch = outbox_relay_tests::Scratch::new();
                    let storage = scratch.storage().await;
                    super::$case(&storage).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let scratch = outbox_relay_tests::Scratch::postgres().await;
                    let storage = scratch.pg_storage().await;
                    super::$case(&storage).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test]
                async fn $case() {
                    let scratch = outbox_relay_tests::Scratch::mysql().await;
                    let storage = scratch.mysql_storage().await;
                    super::$case(&storage).await;
                }
            )*
        }
    };
}

conformance!(
    only_pending_messages_come_back,
    the_batch_limit_is_exact,
    an_ack_is_kept,
    the_retry_count_rises,
    exhausted_messages_do_not_come_back,
    a_claimed_batch_is_invisible_to_a_second_relay,
    an_expired_claim_is_taken_over,
    retention_prunes_only_what_every_target_passed_and_nothing_refers_to,
    the_registry_holds_retention_until_a_target_is_forgotten,
    dead_letters_filter_by_error_page_and_count,
);

#[tokio::test]
async fn sqlite_a_rolled_back_enqueue_persists_nothing() {
    let scratch = Scratch::new();
    let storage = scratch.storage().await;
    let mut tx = storage.pool().begin().await.unwrap();
    producer::sqlite::enqueue(&mut tx, &NewMessage::new("e", b"{}".to_vec()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        storage
            .fetch_pending(0, Position::default(), 10, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn postgres_a_rolled_back_enqueue_persists_nothing() {
    let scratch = Scratch::postgres().await;
    let storage = scratch.pg_storage().await;
    let mut tx = storage.pool().begin().await.unwrap();
    producer::postgres::enqueue(&mut tx, &NewMessage::new("e", b"{}".to_vec()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        storage
            .fetch_pending(0, Position::default(), 10, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_messages")
        .fetch_one(storage.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn mysql_a_rolled_back_enqueue_persists_nothing() {
    let scratch = Scratch::mysql().await;
    let storage = scratch.mysql_storage().await;
    let mut tx = storage.pool().begin().await.unwrap();
    producer::mysql::enqueue(&mut tx, &NewMessage::new("e", b"{}".to_vec()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        storage
            .fetch_pending(0, Position::default(), 10, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_messages")
        .fetch_one(storage.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}
