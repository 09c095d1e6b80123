//! The partition lease as a worker holds it: taken or renewed in the
//! database once a quarter of its TTL has passed, re-checked before every
//! plugin call, handed over when another live relay is assigned, and moved
//! with each written ack.
//!
//! A relay that was paused (SIGSTOP, a frozen VM) past a quarter of the
//! TTL asks the database again before it delivers what it holds, and drops
//! it when the lease has moved, so a resumed relay never delivers batches it
//! read before the pause.

use std::time::Instant;

use super::assigned_owner;
use super::held::Held;
use super::worker::{PartitionWorker, State};
use crate::storage::{Lease, StorageError};

/// A lease is renewed in the database once this fraction of its TTL has
/// passed, not on every step: renewing is a write (a WAL flush on Postgres)
/// per batch otherwise. Before any plugin call at least three quarters of the
/// TTL remain, which the config keeps above three `call_timeout`s.
const RENEW_AFTER_FRACTION: u32 = 4;

impl PartitionWorker {
    /// The lease, if this relay is the partition's assigned owner and still
    /// holds it: renewed in the database once a quarter of its TTL has
    /// passed (always, after a pause that long), handed over if another live
    /// relay is assigned. Call it before every plugin call.
    pub(super) async fn held(&self, state: &mut State) -> Result<Option<Lease>, StorageError> {
        let members = self.members.borrow().clone();
        if let Some(assigned) = assigned_owner(&members, &self.target.name, self.partition)
            && assigned != self.owner
        {
            if let Some(lease) = state.held.lease.take() {
                tracing::info!(to = assigned, "handing the partition over");
                self.health.leave(&self.target.name, self.partition);
                state.held.written(state.acks.write_all(&lease).await)?;
                self.storage.release_lease(&lease).await?;
            }
            return Ok(None);
        }
        // Held and renewed recently: still ours, and its position is the
        // cursor as this worker last moved it (only the holder moves it).
        if !self.renewal_due(&state.held)
            && let Some(lease) = &state.held.lease
        {
            return Ok(Some(lease.clone()));
        }
        let asked_at = Instant::now();
        let mut lease = self
            .storage
            .acquire_lease(
                &self.target.name,
                self.partition,
                &self.owner,
                self.settings.lease_ttl,
            )
            .await?;
        let mut moved = false;
        match (&mut lease, &state.held.lease) {
            // Someone else moved the cursor while this worker was away (a
            // pause longer than the lease): what it read before is stale.
            // (Past what this worker acknowledged or is acknowledging: a
            // write of its own may have committed and not yet been joined.)
            (Some(new), Some(old))
                if new.position > old.position.max(state.acks.furthest().unwrap_or_default()) =>
            {
                tracing::warn!(
                    "the cursor moved while this relay was away; dropping what this worker held"
                );
                state.acks.discard();
                moved = true;
            }
            (Some(new), Some(old)) => new.position = new.position.max(old.position),
            (Some(_), None) => tracing::info!("partition taken"),
            (None, Some(_)) => {
                tracing::warn!("the lease moved to another relay; dropping what this worker held");
                state.acks.discard();
                self.health.leave(&self.target.name, self.partition);
            }
            (None, None) => {}
        }
        state.held.lease.clone_from(&lease);
        state.held.renewed_at = lease.as_ref().map(|_| asked_at);
        // The caller starts over from the database's cursor on its next step.
        Ok(if moved { None } else { lease })
    }

    /// True once a quarter of the lease's TTL has passed since it was last
    /// taken or renewed in the database.
    pub(super) fn renewal_due(&self, held: &Held) -> bool {
        held.renewed_at
            .is_none_or(|at| at.elapsed() >= self.settings.lease_ttl / RENEW_AFTER_FRACTION)
    }
}
