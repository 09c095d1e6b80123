//! The lease as a worker holds it between steps, and how each ack write
//! moves it.

use std::time::Instant;

use super::pipeline::Written;
use crate::storage::{Lease, StorageError};

/// The lease as this worker holds it.
#[derive(Default)]
pub(super) struct Held {
    pub lease: Option<Lease>,
    /// When the lease was last taken or renewed in the database (the time
    /// the request was sent, so the lease lasts at least `lease_ttl` from it).
    pub renewed_at: Option<Instant>,
}

impl Held {
    /// Applies what an ack write came to. `false`: the lease was lost.
    pub fn written(
        &mut self,
        written: Result<Written, StorageError>,
    ) -> Result<bool, StorageError> {
        match written {
            Ok(Written::Upto(position)) => {
                // The cursor moved (never backwards): so does the lease held.
                if let (Some(held), Some(p)) = (self.lease.as_mut(), position) {
                    held.position = held.position.max(p);
                }
                Ok(true)
            }
            Ok(Written::LeaseLost) => {
                tracing::warn!("lease lost during a batch; another relay will deliver it again");
                *self = Held::default();
                Ok(false)
            }
            Err(e) => {
                // Read the cursor back from the database before the next batch.
                self.renewed_at = None;
                Err(e)
            }
        }
    }
}
