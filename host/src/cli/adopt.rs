//! `outbox-relay adopt`: installs (or with `--undo` removes) the triggers
//! that copy another tool's outbox rows into `outbox_messages`
//! (crate::adopt), in one transaction with the optional backfill and the
//! `outbox_adopted` row that `status` shows.

use anyhow::{Context, bail};

use super::ConfigArg;
use crate::adopt::{Adoption, Database, Debezium, Shape};
use crate::config::Config;

pub(crate) use crate::adopt::adopted_lines;

#[derive(clap::Subcommand)]
pub(crate) enum AdoptCommand {
    /// A spakky-outbox table (`spakky_event_outbox`): each row's
    /// `published_at` is set as it is copied, so spakky's own relay finds
    /// nothing pending.
    Spakky {
        #[command(flatten)]
        options: AdoptOptions,
        /// Also copy the rows already there with `published_at IS NULL`,
        /// once, in `created_at` order.
        #[arg(long)]
        backfill: bool,
    },
    /// A Debezium outbox event router table (`id`, `aggregatetype`,
    /// `aggregateid`, `type`, `payload`).
    Debezium {
        #[command(flatten)]
        options: AdoptOptions,
        /// The column holding the event name.
        #[arg(long, default_value = "aggregatetype")]
        event_from: String,
        /// The column holding the partition key (`none` for no key).
        #[arg(long, default_value = "aggregateid")]
        key_from: String,
        /// An extra column copied as a header: `column=header-name`.
        #[arg(long = "header", value_name = "COLUMN=NAME")]
        headers: Vec<String>,
    },
}

#[derive(clap::Args)]
pub(crate) struct AdoptOptions {
    #[command(flatten)]
    config: ConfigArg,
    /// The table to adopt (spakky: `spakky_event_outbox` by default).
    #[arg(long)]
    table: Option<String>,
    /// Print the SQL instead of running it.
    #[arg(long)]
    dry_run: bool,
    /// Remove the triggers (rows already copied stay in the outbox).
    #[arg(long)]
    undo: bool,
}

pub(crate) async fn run(command: AdoptCommand) -> anyhow::Result<()> {
    let (options, shape, backfill) = match command {
        AdoptCommand::Spakky { options, backfill } => (options, Shape::Spakky, backfill),
        AdoptCommand::Debezium {
            options,
            event_from,
            key_from,
            headers,
        } => {
            let headers = headers
                .iter()
                .map(|h| match h.split_once('=') {
                    Some((column, name)) if !column.is_empty() && !name.is_empty() => {
                        Ok((column.to_string(), name.to_ascii_lowercase()))
                    }
                    _ => bail!("--header {h:?}: write it as COLUMN=HEADER-NAME"),
                })
                .collect::<anyhow::Result<_>>()?;
            let key_from = (key_from != "none").then_some(key_from);
            (
                options,
                Shape::Debezium(Debezium {
                    event_from,
                    key_from,
                    headers,
                }),
                false,
            )
        }
    };
    let table = match (&options.table, shape.default_table()) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.to_string(),
        (None, None) => bail!("name the table with --table"),
    };
    let adoption = Adoption { table, shape };
    let config = Config::load(&options.config.config)?;
    let database = crate::config::redact_url(&config.database);
    let db = if options.dry_run {
        Database::existing(&config).await?
    } else {
        Database::open(&config).await?
    };

    if options.undo {
        if !db.is_adopted(&adoption.table).await? {
            bail!(
                "{database}: table {:?} is not adopted (see `outbox-relay status`)",
                adoption.table
            );
        }
        let sql = db.undo_sql(&adoption).await?;
        if options.dry_run {
            print_sql(&sql);
            return Ok(());
        }
        db.execute(&sql).await?;
        println!(
            "{}: table {:?} is no longer adopted (its trigger is gone; rows already copied stay in the outbox)",
            database, adoption.table
        );
        return Ok(());
    }

    let context = || format!("cannot adopt {:?} in {database}", adoption.table);
    if options.dry_run {
        let (mapping, sql) = db
            .adoption_sql(&adoption, backfill)
            .await
            .with_context(context)?;
        println!("-- {mapping}");
        print_sql(&sql);
        return Ok(());
    }
    let adopted = db.adopt(&adoption, backfill).await.with_context(context)?;
    let copied = adopted.copied;
    println!(
        "{database}: adopted {:?} ({}): {}",
        adoption.table,
        adoption.shape.name(),
        adopted.mapping
    );
    if backfill {
        println!("backfilled {copied} unpublished row(s) into the outbox");
    }
    Ok(())
}

fn print_sql(sql: &[String]) {
    println!("BEGIN;");
    for statement in sql {
        println!("{statement}");
    }
    println!("COMMIT;");
}
