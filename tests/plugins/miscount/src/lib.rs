//! `miscount`: returns one outcome more than its batch has envelopes (config
//! `{"extra": true}`) or one fewer (the default), breaking the batch
//! contract. It uses raw bindings of the repository's WIT, as a careless
//! third party might (the SDK would log the miscount, and pass it on as is).

wit_bindgen::generate!({
    path: "../../../wit",
    world: "transport-plugin",
});

use std::sync::atomic::{AtomicBool, Ordering};

use exports::outbox::relay::transport::{Envelope, Guest, Outcome};

static EXTRA: AtomicBool = AtomicBool::new(false);

struct Miscount;

impl Guest for Miscount {
    fn init(_target: String, config: String) -> Result<(), String> {
        EXTRA.store(config.contains("\"extra\":true"), Ordering::SeqCst);
        Ok(())
    }

    fn deliver(batch: Vec<Envelope>) -> Vec<Outcome> {
        let n = if EXTRA.load(Ordering::SeqCst) {
            batch.len() + 1
        } else {
            batch.len().saturating_sub(1)
        };
        (0..n).map(|_| Outcome::Delivered).collect()
    }
}

export!(Miscount);
