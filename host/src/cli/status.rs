//! `outbox-relay status`: per target, what the database says. It only
//! reads: an unmigrated database is refused, not created.

use std::io::Write;
use std::time::Duration;

use humantime_serde::re::humantime;

use crate::app;
use crate::config::Config;
use crate::storage::TargetStatus;

/// The shortest `--watch` interval: each refresh is a round of queries.
const MIN_WATCH: Duration = Duration::from_millis(100);

/// Prints the status once, or every `watch` until SIGINT/SIGTERM. A reader
/// that goes away (`status | head`) ends it quietly.
pub(crate) async fn run(config: Config, json: bool, watch: Option<Duration>) -> anyhow::Result<()> {
    if let Some(every) = watch
        && every < MIN_WATCH
    {
        anyhow::bail!(
            "--watch {} is too short: the shortest interval is {}",
            humantime::format_duration(every),
            humantime::format_duration(MIN_WATCH)
        );
    }
    let storage = app::open_migrated_storage(&config).await?;
    let names = super::targets::status_targets(&*storage, &config).await?;
    let adopted = super::adopt::adopted_lines(&config).await?;
    let Some(every) = watch else {
        return quietly(print(
            &mut std::io::stdout().lock(),
            storage.status(&names).await?,
            &adopted,
            json,
        ));
    };
    // One signal listener for the whole watch, so a signal between two
    // refreshes is not missed.
    let stop = app::supervisor::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let rows = storage.status(&names).await?;
        let mut out = std::io::stdout().lock();
        let printed = (|| -> anyhow::Result<()> {
            if !json {
                // Clear the screen and go home, like `watch`.
                write!(out, "\x1b[2J\x1b[H")?;
                writeln!(
                    out,
                    "{}  (every {}, Ctrl-C to stop)\n",
                    config.source.display(),
                    humantime::format_duration(every)
                )?;
            }
            print(&mut out, rows, &adopted, json)?;
            out.flush()?;
            Ok(())
        })();
        drop(out);
        if is_closed_pipe(&printed) {
            return Ok(());
        }
        printed?;
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// True when printing failed because the reader closed the pipe.
fn is_closed_pipe(result: &anyhow::Result<()>) -> bool {
    result.as_ref().err().is_some_and(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A closed pipe is not an error of `status`: its reader has what it wanted.
fn quietly(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if is_closed_pipe(&result) {
        Ok(())
    } else {
        result
    }
}

fn print(
    out: &mut impl Write,
    rows: Vec<TargetStatus>,
    adopted: &[String],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:>10} {:>14} {:>9} {:>6}  LEASES",
        "TARGET", "LAG", "OLDEST PENDING", "RETRIES", "DEAD"
    )?;
    for r in &rows {
        let oldest = r
            .oldest_pending_age_ms
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let leases = if r.lease_owners.is_empty() {
            "-".to_string()
        } else {
            r.lease_owners.join(", ")
        };
        writeln!(
            out,
            "{:<20} {:>10} {:>14} {:>9} {:>6}  {}",
            r.target, r.lag, oldest, r.retries_pending, r.dead_letters, leases
        )?;
    }
    for note in super::targets::notes(&rows) {
        writeln!(out, "\n{note}")?;
    }
    for line in adopted {
        writeln!(out, "\n{line}")?;
    }
    Ok(())
}
