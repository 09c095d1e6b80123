//! The adoption SQL for PostgreSQL: a PL/pgSQL trigger function per table.
//! A spakky table gets a `BEFORE INSERT` trigger (so it can stamp
//! `published_at` on the row being inserted); a Debezium table an `AFTER
//! INSERT` one (its producer may delete the row in the same transaction).
//! Nothing here can make a producer's insert fail on a value: an id that is
//! not a UUID becomes the UUID of its MD5 (the original travels as header
//! `id` for Debezium), a missing event name or payload becomes empty, and the
//! relay dead-letters such a row with the reason instead.

use super::{Adoption, Column, Plan, Shape, quote};

/// The values of one row (`row` is `NEW` in the trigger, `t` in a backfill),
/// in the order of [`COLUMNS`].
fn values(a: &Adoption, columns: &[Column], row: &str) -> Vec<String> {
    let kind = |name: &str| {
        columns
            .iter()
            .find(|c| c.name == name)
            .map_or("", |c| c.kind.as_str())
    };
    let id = if kind("id") == "uuid" {
        format!("{row}.id")
    } else {
        format!(
            "(CASE WHEN {row}.id::text ~* '^[0-9a-f]{{8}}-?[0-9a-f]{{4}}-?[0-9a-f]{{4}}-?[0-9a-f]{{4}}-?[0-9a-f]{{12}}$' \
             THEN {row}.id::text::uuid ELSE md5({row}.id::text)::uuid END)"
        )
    };
    let payload = if kind("payload") == "bytea" {
        format!("coalesce({row}.payload, ''::bytea)")
    } else {
        format!("coalesce(convert_to({row}.payload::text, 'UTF8'), ''::bytea)")
    };
    match &a.shape {
        Shape::Spakky => vec![
            id,
            format!("coalesce({row}.event_name::text, '')"),
            "NULL".into(),
            payload,
            format!("coalesce({row}.headers::jsonb, '{{}}'::jsonb)"),
            format!(
                "coalesce((extract(epoch FROM {row}.created_at) * 1000)::bigint, \
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
            ),
        ],
        Shape::Debezium(d) => {
            let mut pairs = vec![format!("'id', {row}.id::text")];
            for (column, header) in &d.headers {
                pairs.push(format!("{}, {row}.{column}::text", quote(header)));
            }
            vec![
                id,
                format!("coalesce({row}.{}::text, '')", d.event_from),
                d.key_from
                    .as_ref()
                    .map_or("NULL".into(), |k| format!("{row}.{k}::text")),
                payload,
                format!(
                    "jsonb_strip_nulls(jsonb_build_object({}))",
                    pairs.join(", ")
                ),
                "(extract(epoch FROM clock_timestamp()) * 1000)::bigint".into(),
            ]
        }
    }
}

const COLUMNS: &str = "id, event_name, partition_key, payload, headers, created_at_ms";

pub(super) fn plan(a: &Adoption, columns: &[Column], backfill: bool) -> Plan {
    let table = &a.table;
    let name = a.trigger_name();
    let copy = format!(
        "INSERT INTO outbox_messages ({COLUMNS})\n        VALUES ({})\n        ON CONFLICT (id) DO NOTHING;",
        values(a, columns, "NEW").join(",\n                ")
    );
    let (when, body, result) = match a.shape {
        Shape::Spakky => (
            "BEFORE",
            format!(
                "    IF NEW.published_at IS NULL THEN\n        {copy}\n        NEW.published_at := clock_timestamp();\n    END IF;"
            ),
            "NEW",
        ),
        Shape::Debezium(_) => ("AFTER", format!("    {copy}"), "NULL"),
    };
    let mut install = vec![
        format!(
            "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $adopt$\nBEGIN\n{body}\n    RETURN {result};\nEND\n$adopt$;"
        ),
        format!("DROP TRIGGER IF EXISTS {name} ON {table};"),
        format!(
            "CREATE TRIGGER {name} {when} INSERT ON {table}\n    FOR EACH ROW EXECUTE FUNCTION {name}();"
        ),
    ];
    install.push(format!(
        "INSERT INTO outbox_adopted (table_name, shape, mapping, adopted_at_ms)\n    VALUES ({}, {}, {}, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)\n    ON CONFLICT (table_name) DO UPDATE SET shape = EXCLUDED.shape, mapping = EXCLUDED.mapping, adopted_at_ms = EXCLUDED.adopted_at_ms;",
        quote(table),
        quote(a.shape.name()),
        quote(&a.mapping())
    ));
    let backfill = if backfill {
        vec![
            format!(
                "INSERT INTO outbox_messages ({COLUMNS})\n    SELECT {}\n    FROM {table} t WHERE t.published_at IS NULL ORDER BY t.created_at, t.id\n    ON CONFLICT (id) DO NOTHING;",
                values(a, columns, "t").join(",\n           ")
            ),
            format!(
                "UPDATE {table} SET published_at = clock_timestamp() WHERE published_at IS NULL;"
            ),
        ]
    } else {
        Vec::new()
    };
    Plan { install, backfill }
}

pub(super) fn undo(a: &Adoption) -> Vec<String> {
    let name = a.trigger_name();
    vec![
        format!("DROP TRIGGER IF EXISTS {name} ON {};", a.table),
        format!("DROP FUNCTION IF EXISTS {name}();"),
        format!(
            "DELETE FROM outbox_adopted WHERE table_name = {};",
            quote(&a.table)
        ),
    ]
}
