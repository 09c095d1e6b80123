//! Adopting another tool's outbox table in place (`outbox-relay adopt`).
//!
//! Producers keep writing the table they already write. Triggers copy each
//! row inserted into it into `outbox_messages` **inside the producer's own
//! transaction**: a rolled-back business transaction leaves nothing, a
//! committed one is never missed, and the relay delivers the copy like any
//! other message. What each column becomes is this module's [`Shape`]; the
//! SQL for each backend is in `postgres.rs` and `sqlite.rs`, and
//! `docs/adopting.md` is the operator's account of both.
//!
//! - **spakky** (`spakky-outbox` + `spakky-sqlalchemy`, table
//!   `spakky_event_outbox`): `id` stays the message id (the idempotency key),
//!   `event_name` the event, `payload` the payload, `headers` (its
//!   `traceparent`) the headers, `created_at` the enqueue time. The row's
//!   `published_at` is set as it is copied, so a Spakky relay still running
//!   finds nothing pending and nothing is delivered twice by the two relays.
//! - **debezium** (the outbox event router's table): `id` the message id and
//!   header `id`; `aggregatetype` (or `--event-from`) the event;
//!   `aggregateid` (or `--key-from`) the partition key, so per-key order
//!   holds; `type` and any `--header column=name` headers; `payload` the
//!   payload. A producer that deletes its row in the same transaction keeps
//!   working: the copy is made at insert.
//!
//! Each adopted table is recorded in `outbox_adopted`, which `status` shows.

mod database;
mod postgres;
mod sqlite;

pub use database::{Adopted, Database, adopted_lines};

use std::fmt;

/// The database the outbox lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Which tool's table, and how its columns map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Spakky,
    Debezium(Debezium),
}

/// A Debezium outbox table's mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debezium {
    /// The column whose value is the event name (`aggregatetype`).
    pub event_from: String,
    /// The column whose value is the partition key (`aggregateid`), if any.
    pub key_from: Option<String>,
    /// Extra columns copied as headers: (column, header name). `type` is
    /// added as header `type` when the table has it; `id` always is.
    pub headers: Vec<(String, String)>,
}

impl Default for Debezium {
    fn default() -> Self {
        Debezium {
            event_from: "aggregatetype".into(),
            key_from: Some("aggregateid".into()),
            headers: Vec::new(),
        }
    }
}

/// One table to adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub table: String,
    pub shape: Shape,
}

/// A column of the adopted table, as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type's name, lower-case (`uuid`, `bytea`, `jsonb`, `text`, `blob`...).
    pub kind: String,
}

/// The SQL that adopts a table, in the order it runs, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What each column becomes (as checked against the table).
    pub mapping: String,
    /// Triggers (and their function), and the registry row.
    pub install: Vec<String>,
    /// Copies the rows already there that are not yet published (spakky).
    pub backfill: Vec<String>,
}

/// Where things are on Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schemas {
    /// The schema of `outbox_messages`.
    pub outbox: String,
    /// The schema of the adopted table.
    pub table: String,
}

impl Schemas {
    pub fn public() -> Schemas {
        Schemas {
            outbox: "public".into(),
            table: "public".into(),
        }
    }
}

/// Why a table cannot be adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptError(pub String);

impl fmt::Display for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AdoptError {}

fn error(message: impl Into<String>) -> AdoptError {
    AdoptError(message.into())
}

impl Shape {
    pub fn name(&self) -> &'static str {
        match self {
            Shape::Spakky => "spakky",
            Shape::Debezium(_) => "debezium",
        }
    }

    /// The table a shape adopts when `--table` is not given.
    pub fn default_table(&self) -> Option<&'static str> {
        match self {
            Shape::Spakky => Some("spakky_event_outbox"),
            Shape::Debezium(_) => None,
        }
    }
}

impl Adoption {
    /// The trigger's (and on Postgres its function's) name.
    pub fn trigger_name(&self) -> String {
        format!("outbox_adopt_{}", self.table)
    }

    /// What each column becomes, one line each, for `--dry-run`, the
    /// registry and `status`.
    pub fn mapping(&self) -> String {
        match &self.shape {
            Shape::Spakky => {
                "id -> id, event_name -> event, payload -> payload, headers -> headers, \
                 created_at -> created_at_ms; published_at set as each row is copied"
                    .into()
            }
            Shape::Debezium(d) => {
                let mut parts = vec![
                    "id -> id and header id".to_string(),
                    format!("{} -> event", d.event_from),
                ];
                if let Some(key) = &d.key_from {
                    parts.push(format!("{key} -> partition key"));
                }
                parts.push("payload -> payload".into());
                for (column, header) in &d.headers {
                    parts.push(format!("{column} -> header {header}"));
                }
                parts.join(", ")
            }
        }
    }

    /// The SQL for `backend`, given the table's `columns` (empty: the table
    /// does not exist) and the outbox's partition count.
    /// `schema`: the Postgres schemas of `outbox_messages` and of the table
    /// (ignored on SQLite).
    pub fn plan(
        &self,
        backend: Backend,
        columns: &[Column],
        partitions: u32,
        backfill: bool,
        schema: &Schemas,
    ) -> Result<Plan, AdoptError> {
        check_identifier("table", &self.table)?;
        if columns.is_empty() {
            return Err(error(format!("table {:?} does not exist", self.table)));
        }
        let shape = self.checked_shape(backend, columns)?;
        if backfill && !matches!(shape, Shape::Spakky) {
            return Err(error(
                "--backfill copies rows not yet published (spakky's `published_at IS NULL`); \
                 a Debezium table has no published state",
            ));
        }
        if backend == Backend::Sqlite && partitions > 1 {
            return Err(error(format!(
                "the outbox has {partitions} partitions: on SQLite a trigger cannot compute a \
                 message's partition (FNV-1a), so adopting needs relay.partitions = 1"
            )));
        }
        let adopted = Adoption {
            table: self.table.clone(),
            shape,
        };
        let mut plan = match backend {
            Backend::Postgres => postgres::plan(&adopted, columns, backfill, schema),
            Backend::Sqlite => sqlite::plan(&adopted, columns, backfill),
        };
        plan.mapping = adopted.mapping();
        Ok(plan)
    }

    /// The SQL that removes the adoption.
    pub fn undo(&self, backend: Backend, schema: &Schemas) -> Result<Vec<String>, AdoptError> {
        check_identifier("table", &self.table)?;
        Ok(match backend {
            Backend::Postgres => postgres::undo(self, schema),
            Backend::Sqlite => sqlite::undo(self),
        })
    }

    /// The shape with `type` added as a header when a Debezium table has
    /// it, after checking that every column the mapping names exists.
    fn checked_shape(&self, backend: Backend, columns: &[Column]) -> Result<Shape, AdoptError> {
        let kind = |name: &str| {
            columns
                .iter()
                .find(|c| c.name == name)
                .map_or("", |c| c.kind.as_str())
        };
        // A type the trigger cannot convert would fail every producer
        // insert; refuse it here instead.
        let typed = |name: &str, ok: &[&str], want: &str| {
            let k = kind(name);
            if backend == Backend::Postgres && !ok.iter().any(|o| k.starts_with(o)) {
                Err(error(format!(
                    "column {name:?} of {:?} is {k}; adopting needs {want}",
                    self.table
                )))
            } else {
                Ok(())
            }
        };
        let has = |name: &str| columns.iter().any(|c| c.name == name);
        let need = |name: &str, what: &str| {
            if has(name) {
                Ok(())
            } else {
                Err(error(format!(
                    "table {:?} has no column {name:?} ({what}); it has {}",
                    self.table,
                    columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        match &self.shape {
            Shape::Spakky => {
                for (name, what) in [
                    ("id", "the message id"),
                    ("event_name", "the event"),
                    ("payload", "the payload"),
                    ("headers", "the headers"),
                    ("created_at", "the enqueue time"),
                    ("published_at", "what spakky's relay has published"),
                ] {
                    need(name, what)?;
                }
                typed("created_at", &["timestamp"], "a timestamp")?;
                typed("published_at", &["timestamp"], "a timestamp")?;
                typed("headers", &["json"], "json or jsonb")?;
                Ok(Shape::Spakky)
            }
            Shape::Debezium(d) => {
                need("id", "the message id")?;
                need("payload", "the payload")?;
                check_identifier("--event-from", &d.event_from)?;
                need(&d.event_from, "--event-from: the event")?;
                if let Some(key) = &d.key_from {
                    check_identifier("--key-from", key)?;
                    need(key, "--key-from: the partition key")?;
                }
                let mut d = d.clone();
                for (column, header) in &d.headers {
                    check_identifier("--header", column)?;
                    need(column, "--header")?;
                    check_header_name(header)?;
                }
                if has("type") && !d.headers.iter().any(|(c, _)| c == "type") {
                    d.headers.insert(0, ("type".into(), "type".into()));
                }
                if d.headers.iter().any(|(_, h)| h == "id") {
                    return Err(error(
                        "header `id` is the message id; name the column's header otherwise",
                    ));
                }
                Ok(Shape::Debezium(d))
            }
        }
    }
}

/// Table and column names are put into SQL as written: only plain
/// identifiers are accepted.
fn check_identifier(what: &str, name: &str) -> Result<(), AdoptError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && name.len() <= 48 {
        Ok(())
    } else {
        Err(error(format!(
            "{what} {name:?} is not a plain identifier (letters, digits and `_`, at most 48)"
        )))
    }
}

/// Header names are lower-case tokens, as the relay's headers are.
fn check_header_name(name: &str) -> Result<(), AdoptError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(error(format!(
            "header name {name:?} must be lower-case letters, digits, `-` or `_`"
        )))
    }
}

/// A quoted SQL identifier (names are checked plain identifiers, so
/// quoting keeps their case and lets reserved words through).
fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

/// A SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(names: &[(&str, &str)]) -> Vec<Column> {
        names
            .iter()
            .map(|(n, k)| Column {
                name: n.to_string(),
                kind: k.to_string(),
            })
            .collect()
    }

    fn spakky_pg() -> Vec<Column> {
        columns(&[
            ("id", "uuid"),
            ("event_name", "text"),
            ("payload", "bytea"),
            ("headers", "json"),
            ("created_at", "timestamp with time zone"),
            ("published_at", "timestamp with time zone"),
            ("retry_count", "integer"),
            ("claimed_at", "timestamp with time zone"),
        ])
    }

    #[test]
    fn missing_tables_columns_and_odd_names_are_named() {
        let a = Adoption {
            table: "spakky_event_outbox".into(),
            shape: Shape::Spakky,
        };
        let e = a
            .plan(Backend::Postgres, &[], 1, false, &Schemas::public())
            .unwrap_err();
        assert!(e.0.contains("does not exist"), "{e}");
        let mut cols = spakky_pg();
        cols.retain(|c| c.name != "published_at");
        let e = a
            .plan(Backend::Postgres, &cols, 1, false, &Schemas::public())
            .unwrap_err();
        assert!(e.0.contains("no column \"published_at\""), "{e}");
        let bad = Adoption {
            table: "x; drop table y".into(),
            shape: Shape::Spakky,
        };
        assert!(
            bad.plan(
                Backend::Postgres,
                &spakky_pg(),
                1,
                false,
                &Schemas::public()
            )
            .is_err()
        );
        let e = a
            .plan(Backend::Sqlite, &spakky_pg(), 4, false, &Schemas::public())
            .unwrap_err();
        assert!(e.0.contains("relay.partitions = 1"), "{e}");
    }

    #[test]
    fn debezium_adds_type_and_refuses_backfill() {
        let a = Adoption {
            table: "outbox".into(),
            shape: Shape::Debezium(Debezium {
                headers: vec![("tenant".into(), "x-tenant".into())],
                ..Debezium::default()
            }),
        };
        let cols = columns(&[
            ("id", "uuid"),
            ("aggregatetype", "text"),
            ("aggregateid", "text"),
            ("type", "text"),
            ("payload", "jsonb"),
            ("tenant", "text"),
        ]);
        let Shape::Debezium(d) = a.checked_shape(Backend::Postgres, &cols).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            d.headers,
            vec![
                ("type".to_string(), "type".to_string()),
                ("tenant".into(), "x-tenant".into())
            ]
        );
        let e = a
            .plan(Backend::Postgres, &cols, 1, true, &Schemas::public())
            .unwrap_err();
        assert!(e.0.contains("no published state"), "{e}");
        let plan = a
            .plan(Backend::Postgres, &cols, 1, false, &Schemas::public())
            .unwrap();
        let sql = plan.install.join("\n");
        assert!(
            sql.contains("AFTER INSERT ON \"public\".\"outbox\""),
            "{sql}"
        );
        assert!(sql.contains("'x-tenant'"), "{sql}");
    }
}
