//! `outbox-relay status`: per target, what the database says. It only
//! reads: an unmigrated database is refused, not created.

use std::time::Duration;

use humantime_serde::re::humantime;

use crate::app;
use crate::config::Config;
use crate::storage::TargetStatus;

/// Prints the status once, or every `watch` until SIGINT/SIGTERM.
pub(crate) async fn run(config: Config, json: bool, watch: Option<Duration>) -> anyhow::Result<()> {
    let storage = app::open_migrated_storage(&config).await?;
    let names = super::targets::status_targets(&*storage, &config).await?;
    let Some(every) = watch else {
        return print(storage.status(&names).await?, json);
    };
    loop {
        let rows = storage.status(&names).await?;
        if !json {
            // Clear the screen and go home, like `watch`.
            print!("\x1b[2J\x1b[H");
            println!(
                "{}  (every {}, Ctrl-C to stop)\n",
                config.source.display(),
                humantime::format_duration(every)
            );
        }
        print(rows, json)?;
        tokio::select! {
            _ = app::supervisor::shutdown_signal() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn print(rows: Vec<TargetStatus>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:>10} {:>14} {:>9} {:>6}  LEASES",
        "TARGET", "LAG", "OLDEST PENDING", "RETRIES", "DEAD"
    );
    for r in &rows {
        let oldest = r
            .oldest_pending_age_ms
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let leases = if r.lease_owners.is_empty() {
            "-".to_string()
        } else {
            r.lease_owners.join(", ")
        };
        println!(
            "{:<20} {:>10} {:>14} {:>9} {:>6}  {}",
            r.target, r.lag, oldest, r.retries_pending, r.dead_letters, leases
        );
    }
    for note in super::targets::notes(&rows) {
        println!("\n{note}");
    }
    Ok(())
}
