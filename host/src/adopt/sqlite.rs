//! The adoption SQL for SQLite: one `AFTER INSERT` trigger per table, in
//! built-in SQL only (it runs on the producer's connection, which has none
//! of the relay's functions). A spakky row's `published_at` is stamped by an
//! `UPDATE` in the same trigger, in the format SQLAlchemy writes
//! (`YYYY-MM-DD HH:MM:SS.ffffff`). Ids stored the way SQLAlchemy stores a
//! `Uuid` on SQLite (32 hex digits, or 16 bytes) are written in the canonical
//! dashed form; anything else is copied as it is, and the relay dead-letters
//! it if it is not a UUID.

use super::{Adoption, Plan, Shape, quote};

/// `expr` (32 hex digits) in dashed form.
fn dashed(expr: &str) -> String {
    format!(
        "substr({expr}, 1, 8) || '-' || substr({expr}, 9, 4) || '-' || substr({expr}, 13, 4) || '-' || substr({expr}, 17, 4) || '-' || substr({expr}, 21, 12)"
    )
}

const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
const COLUMNS: &str = "id, event_name, partition_key, payload, headers, created_at_ms";

fn values(a: &Adoption, row: &str) -> Vec<String> {
    let id = format!(
        "lower(CASE WHEN typeof({row}.id) = 'blob' AND length({row}.id) = 16 THEN {} \
         WHEN length({row}.id) = 32 THEN {} ELSE CAST({row}.id AS TEXT) END)",
        dashed(&format!("hex({row}.id)")),
        dashed(&format!("{row}.id"))
    );
    let payload = format!("CAST(coalesce({row}.payload, '') AS BLOB)");
    match &a.shape {
        Shape::Spakky => vec![
            id,
            format!("coalesce(CAST({row}.event_name AS TEXT), '')"),
            "NULL".into(),
            payload,
            format!("coalesce({row}.headers, '{{}}')"),
            format!(
                "coalesce(CAST(round((julianday({row}.created_at) - 2440587.5) * 86400000) AS INTEGER), {NOW_MS})"
            ),
        ],
        Shape::Debezium(d) => {
            let mut pairs = vec![format!("'id', CAST({row}.id AS TEXT)")];
            for (column, header) in &d.headers {
                pairs.push(format!("{}, CAST({row}.{column} AS TEXT)", quote(header)));
            }
            vec![
                id,
                format!("coalesce(CAST({row}.{} AS TEXT), '')", d.event_from),
                d.key_from
                    .as_ref()
                    .map_or("NULL".into(), |k| format!("CAST({row}.{k} AS TEXT)")),
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
    let table = &a.table;
    let name = a.trigger_name();
    let copy = format!(
        "INSERT OR IGNORE INTO outbox_messages ({COLUMNS})\n    VALUES ({});",
        values(a, "NEW").join(",\n            ")
    );
    let trigger = match a.shape {
        Shape::Spakky => format!(
            "CREATE TRIGGER {name} AFTER INSERT ON {table}\n    FOR EACH ROW WHEN NEW.published_at IS NULL\nBEGIN\n    {copy}\n    UPDATE {table} SET published_at = {PUBLISHED_NOW} WHERE id = NEW.id;\nEND;"
        ),
        Shape::Debezium(_) => format!(
            "CREATE TRIGGER {name} AFTER INSERT ON {table}\n    FOR EACH ROW\nBEGIN\n    {copy}\nEND;"
        ),
    };
    let install = vec![
        format!("DROP TRIGGER IF EXISTS {name};"),
        trigger,
        format!(
            "INSERT OR REPLACE INTO outbox_adopted (table_name, shape, mapping, adopted_at_ms)\n    VALUES ({}, {}, {}, {NOW_MS});",
            quote(table),
            quote(a.shape.name()),
            quote(&a.mapping())
        ),
    ];
    let backfill = if backfill {
        vec![
            format!(
                "INSERT OR IGNORE INTO outbox_messages ({COLUMNS})\n    SELECT {}\n    FROM {table} t WHERE t.published_at IS NULL ORDER BY t.created_at, t.id;",
                values(a, "t").join(",\n           ")
            ),
            format!(
                "UPDATE {table} SET published_at = {PUBLISHED_NOW} WHERE published_at IS NULL;"
            ),
        ]
    } else {
        Vec::new()
    };
    Plan { install, backfill }
}

pub(super) fn undo(a: &Adoption) -> Vec<String> {
    vec![
        format!("DROP TRIGGER IF EXISTS {};", a.trigger_name()),
        format!(
            "DELETE FROM outbox_adopted WHERE table_name = {};",
            quote(&a.table)
        ),
    ]
}
