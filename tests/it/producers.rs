//! The plain-SQL inserts that docs/producers.md gives to producers in other
//! languages, run as written against each database.

use outbox_relay::message::{Position, partition_of};
use outbox_relay::storage::Storage;
use outbox_relay_tests::Scratch;

/// The ```sql blocks of docs/producers.md, in order: SQLite, Postgres, MySQL.
fn documented_sql() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/producers.md"))
        .unwrap();
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```sql\n") {
        let body = &rest[start + 7..];
        let end = body.find("```").unwrap();
        blocks.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    assert_eq!(
        blocks.len(),
        3,
        "one SQLite, one Postgres and one MySQL example"
    );
    blocks
}

fn check(entry: &outbox_relay::message::LogEntry) {
    let m = entry.as_ref().expect("the documented row decodes");
    assert_eq!(m.id.to_string(), "01936f0e-7b2a-7cc3-9f1e-4a1f5f0c2b11");
    assert_eq!(m.event_name, "order.created");
    assert_eq!(m.partition_key.as_deref(), Some("order-7"));
    assert_eq!(m.payload, br#"{"order":7}"#);
    assert_eq!(m.headers.get("x-tenant").map(String::as_str), Some("acme"));
    assert!(
        m.created_at_ms > 1_700_000_000_000,
        "the default timestamp is in ms"
    );
}

#[tokio::test]
async fn the_documented_sqlite_insert_works() {
    let scratch = Scratch::new();
    let storage = scratch.storage().await;
    sqlx::raw_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        .execute(storage.pool())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(documented_sql()[0].clone()))
        .execute(storage.pool())
        .await
        .unwrap();
    let entries = storage
        .fetch_pending(0, Position::default(), 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    check(&entries[0]);
}

#[tokio::test]
async fn the_documented_postgres_insert_works_and_gets_the_same_partition_as_rust() {
    let scratch = Scratch::postgres().await;
    let storage = scratch.pg_storage().await;
    storage.ensure_partitions(16).await.unwrap();
    sqlx::raw_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        .execute(storage.pool())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(documented_sql()[1].clone()))
        .execute(storage.pool())
        .await
        .unwrap();
    let id = uuid::Uuid::parse_str("01936f0e-7b2a-7cc3-9f1e-4a1f5f0c2b11").unwrap();
    let partition = partition_of(Some("order-7"), &id, 16);
    // Other tests' open transactions on the same server may hide it a moment.
    let start = std::time::Instant::now();
    while storage
        .has_unsettled(partition, Position::default())
        .await
        .unwrap()
    {
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let entries = storage
        .fetch_pending(partition, Position::default(), 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        entries.len(),
        1,
        "the trigger put it in partition {partition}, as Rust would"
    );
    check(&entries[0]);
}

#[tokio::test]
async fn the_documented_mysql_insert_works_and_gets_the_same_partition_as_rust() {
    let scratch = Scratch::mysql().await;
    let storage = scratch.mysql_storage().await;
    storage.ensure_partitions(16).await.unwrap();
    sqlx::raw_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        .execute(storage.pool())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(documented_sql()[2].clone()))
        .execute(storage.pool())
        .await
        .unwrap();
    let id = uuid::Uuid::parse_str("01936f0e-7b2a-7cc3-9f1e-4a1f5f0c2b11").unwrap();
    let partition = partition_of(Some("order-7"), &id, 16);
    let entries = storage
        .fetch_pending(partition, Position::default(), 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        entries.len(),
        1,
        "the relay put it in partition {partition}, as Rust would"
    );
    check(&entries[0]);
}
