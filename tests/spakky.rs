//! The real Spakky application the adoption tests and the `adopted`
//! benchmark run (tests/adopt/spakky/), from the virtualenv `make setup`
//! makes, and its outbox table as SQLAlchemy creates it.

use std::path::PathBuf;

/// `spakky_event_outbox` as spakky-sqlalchemy's model creates it on Postgres.
pub const TABLE_PG: &str = "CREATE TABLE spakky_event_outbox (
    id UUID NOT NULL PRIMARY KEY,
    event_name TEXT NOT NULL,
    payload BYTEA NOT NULL,
    headers JSON NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    published_at TIMESTAMP WITH TIME ZONE,
    retry_count INTEGER NOT NULL,
    claimed_at TIMESTAMP WITH TIME ZONE
)";

/// Where the Spakky apps are.
pub const APPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/adopt/spakky");

/// The Spakky virtualenv's python, or why it is missing.
pub fn python() -> Result<PathBuf, String> {
    let python = crate::target_dir().join("spakky-venv/bin/python");
    if python.is_file() {
        Ok(python)
    } else {
        Err(format!(
            "no Spakky virtualenv at {}: run `make setup` (tests/setup.sh installs spakky 6.4.0 from PyPI)",
            python
                .parent()
                .and_then(|p| p.parent())
                .unwrap_or(&python)
                .display()
        ))
    }
}
