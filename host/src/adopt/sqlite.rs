//! The adoption SQL for SQLite: one `AFTER INSERT` trigger per table, in
//! built-in SQL only (it runs on the producer's connection, which has none
//! of the relay's functions). A spakky row's `published_at` is stamped by an
//! `UPDATE` in the same trigger, in the format SQLAlchemy writes
//! (`YYYY-MM-DD HH:MM:SS.ffffff`). Ids stored the way SQLAlchemy stores a
//! `Uuid` on SQLite (32 hex digits, or 16 bytes) are written in the canonical
//! dashed form; anything else is copied as it is, and the relay dead-letters
//! it if it is not a UUID (SQLite has no MD5 to map it with); a null id
//! becomes a unique non-UUID, dead-lettered likewise, never dropped.
//!
//! The copy is an `INSERT … SELECT … WHERE NOT EXISTS`, not `INSERT OR
//! IGNORE`: a producer's own `INSERT OR REPLACE` (or `OR ABORT`) would
//! override a conflict clause inside the trigger, and a duplicate id must
//! neither fail the producer nor replace the message already there. Every
//! name is quoted.

use super::{Adoption, Plan, Shape, ident, quote};

/// `expr` (32 hex digits) in dashed form.
fn dashed(expr: &str) -> String {
    format!(
        "substr({expr}, 1, 8) || '-' || substr({expr}, 9, 4) || '-' || substr({expr}, 13, 4) || '-' || substr({expr}, 17, 4) || '-' || substr({expr}, 21, 12)"
    )
}

const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
const COLUMNS: &str = "id, event_name, partition_key, payload, headers, created_at_ms";

/// The canonical id of `row`: 16 bytes or 32 hex digits in dashed form,
/// anything else as text; null when the row's id is.
fn canonical(row: &str) -> String {
    let id = format!("{row}.\"id\"");
    format!(
        "lower(CASE WHEN typeof({id}) = 'blob' AND length({id}) = 16 THEN {} \
         WHEN length({id}) = 32 THEN {} ELSE CAST({id} AS TEXT) END)",
        dashed(&format!("hex({id})")),
        dashed(&id)
    )
}

/// The message id of `row`: [`canonical`], or for a null id a unique value
/// that is not a UUID (the relay dead-letters it with the reason).
fn id(row: &str) -> String {
    format!(
        "coalesce({}, 'not-a-uuid:' || lower(hex(randomblob(16))))",
        canonical(row)
    )
}

fn values(a: &Adoption, row: &str) -> Vec<String> {
    let col = |name: &str| format!("{row}.{}", ident(name));
    let payload = format!("CAST(coalesce({}, '') AS BLOB)", col("payload"));
    match &a.shape {
        Shape::Spakky => vec![
            id(row),
            format!("coalesce(CAST({} AS TEXT), '')", col("event_name")),
            "NULL".into(),
            payload,
            format!("coalesce({}, '{{}}')", col("headers")),
            format!(
                "coalesce(CAST(round((julianday({}) - 2440587.5) * 86400000) AS INTEGER), {NOW_MS})",
                col("created_at")
            ),
        ],
        Shape::Debezium(d) => {
            // The source's id as Debezium would send it (left out when null).
            let mut pairs = vec![format!("'id', {}", canonical(row))];
            for (column, header) in &d.headers {
                pairs.push(format!("{}, CAST({} AS TEXT)", quote(header), col(column)));
            }
            vec![
                id(row),
                format!("coalesce(CAST({} AS TEXT), '')", col(&d.event_from)),
                d.key_from
                    .as_ref()
                    .map_or("NULL".into(), |k| format!("CAST({} AS TEXT)", col(k))),
                payload,
                // json_object keeps NULLs as JSON null; the relay wants strings.
                format!(
                    "(SELECT coalesce(json_group_object(key, value), '{{}}') FROM json_each(json_object({})) WHERE type <> 'null')",
                    pairs.join(", ")
                ),
                NOW_MS.into(),
            ]
        }
    }
}

/// SQLAlchemy's text form of a UTC time, six fractional digits.
const PUBLISHED_NOW: &str = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'";

pub(super) fn plan(a: &Adoption, _columns: &[super::Column], backfill: bool) -> Plan {
    let table = ident(&a.table);
    let name = ident(&a.trigger_name());
    let copy = |row: &str| {
        let values = values(a, row);
        format!(
            "INSERT INTO outbox_messages ({COLUMNS})\n    SELECT {} \n    WHERE NOT EXISTS (SELECT 1 FROM outbox_messages WHERE id = {});",
            values.join(",\n           "),
            id(row)
        )
    };
    let trigger = match a.shape {
        Shape::Spakky => format!(
            "CREATE TRIGGER {name} AFTER INSERT ON {table}\n    FOR EACH ROW WHEN NEW.published_at IS NULL\nBEGIN\n    {}\n    UPDATE {table} SET published_at = {PUBLISHED_NOW} WHERE \"id\" = NEW.\"id\";\nEND;",
            copy("NEW")
        ),
        Shape::Debezium(_) => format!(
            "CREATE TRIGGER {name} AFTER INSERT ON {table}\n    FOR EACH ROW\nBEGIN\n    {}\nEND;",
            copy("NEW")
        ),
    };
    let install = vec![
        format!("DROP TRIGGER IF EXISTS {name};"),
        trigger,
        format!(
            "INSERT OR REPLACE INTO outbox_adopted (table_name, shape, mapping, adopted_at_ms)\n    VALUES ({}, {}, {}, {NOW_MS});",
            quote(&a.table),
            quote(a.shape.name()),
            quote(&a.mapping())
        ),
    ];
    let backfill = if backfill {
        vec![
            format!(
                "INSERT OR IGNORE INTO outbox_messages ({COLUMNS})\n    SELECT {}\n    FROM {table} t WHERE t.published_at IS NULL ORDER BY t.created_at, t.\"id\";",
                values(a, "t").join(",\n           ")
            ),
            format!(
                "UPDATE {table} SET published_at = {PUBLISHED_NOW} WHERE published_at IS NULL;"
            ),
        ]
    } else {
        Vec::new()
    };
    Plan {
        mapping: String::new(),
        install,
        backfill,
    }
}

pub(super) fn undo(a: &Adoption) -> Vec<String> {
    vec![
        format!("DROP TRIGGER IF EXISTS {};", ident(&a.trigger_name())),
        format!(
            "DELETE FROM outbox_adopted WHERE table_name = {};",
            quote(&a.table)
        ),
    ]
}
