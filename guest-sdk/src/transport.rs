use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{Config, Envelope, Outcome, Result};

/// A transport: delivers batches of envelopes to one target.
///
/// The host makes one instance per target and worker and keeps it for many
/// batches, so `init` is the place to open a connection that `deliver` reuses.
/// An instance whose call trapped (a panic, running out of memory or time) is
/// thrown away and a new one is made with `init`.
///
/// Export an implementation with [`export_transport!`](crate::export_transport).
pub trait Transport: Sized + 'static {
    /// Called once per instance, before any batch, with the target's name and
    /// its `[targets.<name>.config]` table. An error stops the target from
    /// starting and is shown to the operator: name the offending key.
    fn init(target: &str, config: &Config) -> Result<Self>;

    /// Delivers a batch. Return exactly one [`Outcome`] per envelope, in the
    /// batch's order.
    ///
    /// Should the count be wrong anyway, the SDK only logs it: the host fails
    /// the whole batch and the relay retries its envelopes one by one.
    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome>;
}

/// The cell an exported transport lives in between calls.
#[doc(hidden)]
pub type TransportCell<T> = RefCell<Option<T>>;

#[doc(hidden)]
pub fn init<T: Transport>(
    cell: &'static LocalKey<TransportCell<T>>,
    target: String,
    config: String,
) -> core::result::Result<(), String> {
    let config = Config::parse(&config)?;
    let instance = T::init(&target, &config)?;
    cell.with(|cell| *cell.borrow_mut() = Some(instance));
    Ok(())
}

#[doc(hidden)]
pub fn deliver<T: Transport>(
    cell: &'static LocalKey<TransportCell<T>>,
    batch: Vec<Envelope>,
) -> Vec<Outcome> {
    let expected = batch.len();
    let outcomes = cell.with(|cell| match cell.borrow_mut().as_mut() {
        Some(transport) => transport.deliver(batch),
        None => vec![Outcome::reject(NOT_INITIALISED); expected],
    });
    log_miscount(&outcomes, expected);
    outcomes
}

const NOT_INITIALISED: &str = "plugin not initialised";

/// Logs a transport's wrong outcome count, and changes nothing: the host
/// fails the whole batch and the relay retries its envelopes one by one, so
/// no outcome is made up here for an envelope that may have been delivered.
fn log_miscount(outcomes: &[Outcome], expected: usize) {
    if outcomes.len() != expected {
        crate::log::error(&format!(
            "transport returned {} outcomes for a batch of {expected} envelopes; \
             the host fails the batch and retries its envelopes one by one",
            outcomes.len()
        ));
    }
}

/// Exports a [`Transport`] implementation as the component's
/// `outbox:relay/transport` interface.
///
/// Invoke it once, in the plugin crate's root:
///
/// ```ignore
/// outbox_relay_guest::export_transport!(MyTransport);
/// ```
///
/// The instance made by `init` is kept in a thread-local cell; a `deliver`
/// before a successful `init` answers `Reject("plugin not initialised")` for
/// every envelope.
#[macro_export]
macro_rules! export_transport {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static INSTANCE: $crate::__private::TransportCell<$ty> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct __OutboxRelayTransport;

            impl $crate::__private::transport_world::exports::outbox::relay::transport::Guest
                for __OutboxRelayTransport
            {
                fn init(
                    target: ::std::string::String,
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::transport_init::<$ty>(&INSTANCE, target, config)
                }

                fn deliver(
                    batch: ::std::vec::Vec<
                        $crate::__private::transport_world::outbox::relay::types::Envelope,
                    >,
                ) -> ::std::vec::Vec<
                    $crate::__private::transport_world::outbox::relay::types::Outcome,
                > {
                    $crate::__private::transport_deliver::<$ty>(&INSTANCE, batch)
                }
            }

            $crate::__private::transport_world::export_transport_world!(
                __OutboxRelayTransport with_types_in $crate::__private::transport_world
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo {
        target: String,
    }

    impl Transport for Echo {
        fn init(target: &str, config: &Config) -> Result<Self> {
            config.get_str("required")?;
            Ok(Echo {
                target: target.to_owned(),
            })
        }

        fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
            batch
                .iter()
                .map(|e| match e.attempt {
                    1 => Outcome::Delivered,
                    _ => Outcome::reject(format!("{} {}", self.target, e.id)),
                })
                .collect()
        }
    }

    thread_local! {
        static CELL: TransportCell<Echo> = const { RefCell::new(None) };
    }

    fn envelope(id: &str, attempt: u32) -> Envelope {
        Envelope {
            id: id.into(),
            event_name: "e".into(),
            partition_key: None,
            payload: vec![],
            headers: vec![],
            attempt,
            created_at_ms: 0,
        }
    }

    #[test]
    fn deliver_before_init_rejects_everything() {
        let out = deliver(&CELL, vec![envelope("a", 1), envelope("b", 1)]);
        assert_eq!(out, vec![Outcome::reject("plugin not initialised"); 2]);
    }

    #[test]
    fn init_errors_name_the_key_and_success_keeps_the_instance() {
        let err = init(&CELL, "t".into(), "{}".into()).err();
        assert!(err.is_some_and(|e| e.contains("`required`")));
        assert!(init(&CELL, "t".into(), r#"{"required": "x"}"#.into()).is_ok());
        let out = deliver(&CELL, vec![envelope("a", 1), envelope("b", 2)]);
        assert_eq!(out, vec![Outcome::Delivered, Outcome::reject("t b")]);
    }

    #[test]
    fn wrong_outcome_counts_pass_through_unchanged_for_the_host_to_refuse() {
        init(&CELL, "t".into(), r#"{"required": "x"}"#.into()).unwrap();
        // One envelope in, the test transport answers one per envelope; a
        // miscount is the host's to refuse, never padded or cut here.
        let outcomes = vec![Outcome::Delivered; 3];
        log_miscount(&outcomes, 2);
        assert_eq!(outcomes.len(), 3);
    }
}
