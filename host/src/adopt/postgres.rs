//! The adoption SQL for PostgreSQL: a PL/pgSQL `AFTER INSERT` trigger per
//! table. `AFTER`, so that a row the producer's own `INSERT … ON CONFLICT DO
//! NOTHING` did not insert is not copied either; a spakky row is then
//! marked published by an `UPDATE` of the table, named with its schema (a
//! static statement: its plan is cached, unlike a dynamic `EXECUTE`).
//!
//! The function is `SECURITY DEFINER` with a fixed `search_path` (the
//! outbox's schema, then `pg_catalog`): a producer running as another role
//! needs no privilege on the outbox, and whatever its `search_path`, the
//! outbox's own triggers (the partition and its `outbox_settings`) resolve
//! the relay's tables. Every name is quoted.
//!
//! Nothing here makes a producer's insert fail on a value, and nothing runs
//! in a subtransaction: an id that is not a UUID becomes the UUID of the MD5
//! of table and id (the original travels as header `id` for Debezium), a
//! null id a random UUID, a missing event name or payload becomes empty (the
//! relay dead-letters such a row with the reason), headers JSONB cannot hold
//! (a `\u0000`) are replaced by one header `outbox-adopt-error` saying so,
//! and an infinite time by the time of the copy.

use super::{Adoption, Column, Plan, Schemas, Shape, ident, quote};

/// The values of one row (`row` is `NEW` in the trigger, `t` in a backfill),
/// in the order of [`COLUMNS`].
fn values(a: &Adoption, columns: &[Column], row: &str) -> Vec<String> {
    let kind = |name: &str| {
        columns
            .iter()
            .find(|c| c.name == name)
            .map_or("", |c| c.kind.as_str())
    };
    let col = |name: &str| format!("{row}.{}", ident(name));
    let id_col = col("id");
    let id = if kind("id") == "uuid" {
        format!("coalesce({id_col}, gen_random_uuid())")
    } else {
        format!(
            "coalesce(CASE WHEN {id_col}::text ~* '^[0-9a-f]{{8}}-?[0-9a-f]{{4}}-?[0-9a-f]{{4}}-?[0-9a-f]{{4}}-?[0-9a-f]{{12}}$' \
             THEN {id_col}::text::uuid ELSE md5({} || ':' || {id_col}::text)::uuid END, gen_random_uuid())",
            quote(&a.table)
        )
    };
    let payload = if kind("payload") == "bytea" {
        format!("coalesce({}, ''::bytea)", col("payload"))
    } else {
        format!(
            "coalesce(convert_to({}::text, 'UTF8'), ''::bytea)",
            col("payload")
        )
    };
    let now_ms = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint".to_string();
    match &a.shape {
        Shape::Spakky => {
            let headers = col("headers");
            let created = col("created_at");
            vec![
                id,
                format!("coalesce({}::text, '')", col("event_name")),
                "NULL".into(),
                payload,
                format!(
                    "CASE WHEN strpos({headers}::text, '\\u0000') > 0 \
                     THEN jsonb_build_object('outbox-adopt-error', 'the headers hold \\u0000, which JSONB cannot: they were left out') \
                     ELSE coalesce({headers}::jsonb, '{{}}'::jsonb) END"
                ),
                format!(
                    "CASE WHEN isfinite({created}) THEN (extract(epoch FROM {created}) * 1000)::bigint ELSE {now_ms} END"
                ),
            ]
        }
        Shape::Debezium(d) => {
            let mut pairs = vec![format!("'id', {id_col}::text")];
            for (column, header) in &d.headers {
                pairs.push(format!("{}, {}::text", quote(header), col(column)));
            }
            vec![
                id,
                format!("coalesce({}::text, '')", col(&d.event_from)),
                d.key_from
                    .as_ref()
                    .map_or("NULL".into(), |k| format!("{}::text", col(k))),
                payload,
                format!(
                    "jsonb_strip_nulls(jsonb_build_object({}))",
                    pairs.join(", ")
                ),
                now_ms,
            ]
        }
    }
}

const COLUMNS: &str = "id, event_name, partition_key, payload, headers, created_at_ms";

/// `schema` is where `outbox_messages` lives.
pub(super) fn plan(a: &Adoption, columns: &[Column], backfill: bool, schemas: &Schemas) -> Plan {
    let schema = schemas.outbox.as_str();
    let table = format!("{}.{}", ident(&schemas.table), ident(&a.table));
    let name = ident(&a.trigger_name());
    let outbox = format!("{}.outbox_messages", ident(schema));
    let adopted = format!("{}.outbox_adopted", ident(schema));
    let copy = format!(
        "INSERT INTO {outbox} ({COLUMNS})\n        VALUES ({})\n        ON CONFLICT (id) DO NOTHING;",
        values(a, columns, "NEW").join(",\n                ")
    );
    let body = match a.shape {
        Shape::Spakky => format!(
            "    IF NEW.published_at IS NULL THEN\n        {copy}\n        UPDATE {table} SET published_at = clock_timestamp() WHERE id = NEW.id;\n    END IF;"
        ),
        Shape::Debezium(_) => format!("    {copy}"),
    };
    let install = vec![
        // Two adoptions at once wait for each other instead of colliding in
        // the catalog.
        "SELECT pg_advisory_xact_lock(hashtext('outbox-relay adopt'));".into(),
        format!(
            // The outbox's own triggers run inside this one: under its schema,
            // whatever the producer's search_path.
            "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql\n    SECURITY DEFINER SET search_path = {}, pg_catalog AS $adopt$\nBEGIN\n{body}\n    RETURN NULL;\nEND\n$adopt$;",
            ident(schema)
        ),
        format!("DROP TRIGGER IF EXISTS {name} ON {table};"),
        format!(
            "CREATE TRIGGER {name} AFTER INSERT ON {table}\n    FOR EACH ROW EXECUTE FUNCTION {name}();"
        ),
        format!(
            "INSERT INTO {adopted} (table_name, shape, mapping, adopted_at_ms)\n    VALUES ({}, {}, {}, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)\n    ON CONFLICT (table_name) DO UPDATE SET shape = EXCLUDED.shape, mapping = EXCLUDED.mapping, adopted_at_ms = EXCLUDED.adopted_at_ms;",
            quote(&a.table),
            quote(a.shape.name()),
            quote(&a.mapping())
        ),
    ];
    let backfill = if backfill {
        vec![
            format!(
                "INSERT INTO {outbox} ({COLUMNS})\n    SELECT {}\n    FROM {table} t WHERE t.published_at IS NULL ORDER BY t.created_at, t.id\n    ON CONFLICT (id) DO NOTHING;",
                values(a, columns, "t").join(",\n           ")
            ),
            format!(
                "UPDATE {table} SET published_at = clock_timestamp() WHERE published_at IS NULL;"
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

pub(super) fn undo(a: &Adoption, schemas: &Schemas) -> Vec<String> {
    let name = ident(&a.trigger_name());
    let schema = schemas.outbox.as_str();
    vec![
        format!(
            "DROP TRIGGER IF EXISTS {name} ON {}.{};",
            ident(&schemas.table),
            ident(&a.table)
        ),
        format!("DROP FUNCTION IF EXISTS {name}();"),
        format!(
            "DELETE FROM {}.outbox_adopted WHERE table_name = {};",
            ident(schema),
            quote(&a.table)
        ),
    ]
}
