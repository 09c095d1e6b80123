//! `outbox-relay enqueue`: messages from the command line, for operators
//! and demos (applications use [`crate::producer`]).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::{ConfigArg, load_config};
use crate::{NewMessage, app};

/// Messages saved per transaction.
const CHUNK: usize = 1000;

#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("payload_source")
        .args(["payload", "payload_file"])
        .required(true)
))]
pub(crate) struct EnqueueArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Event name, e.g. order.created.
    #[arg(short, long)]
    event: String,
    /// Payload text (UTF-8); `--payload ''` sends an empty payload.
    #[arg(short, long)]
    payload: Option<String>,
    /// Read the payload bytes from this file (`-`: standard input).
    #[arg(long, value_name = "FILE|-")]
    payload_file: Option<PathBuf>,
    /// Partition key; messages with the same key keep their order on ordered targets.
    #[arg(short, long)]
    key: Option<String>,
    /// A header as name=value; repeatable.
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// How many copies to enqueue (each with its own id, each printed).
    #[arg(short = 'n', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_ascii_lowercase(), value.to_string()))
        }
        _ => Err(format!("expected name=value, got {s:?}")),
    }
}

fn read_payload(args: &EnqueueArgs) -> anyhow::Result<Vec<u8>> {
    match (&args.payload, &args.payload_file) {
        (Some(text), _) => Ok(text.clone().into_bytes()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read the payload from standard input")?;
            Ok(bytes)
        }
        (None, Some(path)) => std::fs::read(path)
            .with_context(|| format!("cannot read the payload file {}", path.display())),
        // clap requires one of the two (the `payload_source` group).
        (None, None) => bail!("give the payload with --payload TEXT or --payload-file FILE|-"),
    }
}

/// Saves `--count` copies and prints every id, one a line.
pub(crate) async fn run(args: EnqueueArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    if args.event.trim().is_empty() {
        bail!("--event must not be empty");
    }
    let payload = read_payload(&args)?;
    let storage = app::open_storage(&config).await?;
    storage.ensure_partitions(config.relay.partitions).await?;
    let messages: Vec<NewMessage> = (0..args.count)
        .map(|_| {
            let mut m = NewMessage::new(args.event.clone(), payload.clone());
            m.partition_key = args.key.clone();
            for (name, value) in &args.headers {
                m = m.with_header(name, value.clone());
            }
            m
        })
        .collect();
    for chunk in messages.chunks(CHUNK) {
        storage.save(chunk).await?;
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for m in &messages {
        writeln!(out, "{}", m.id)?;
    }
    out.flush()?;
    Ok(())
}
