use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{Config, Envelope, Error, HeaderEdit, Result};

/// A header injector: edits each envelope's headers before a transport sees it,
/// e.g. to propagate trace context or attach a signed auth snapshot.
///
/// Instances live like transports do (see [`Transport`](crate::Transport)).
/// Export an implementation with [`export_injector!`](crate::export_injector).
pub trait Injector: Sized + 'static {
    /// Called once per instance with the target's name and the injector's
    /// config table. An error stops the target from starting.
    fn init(target: &str, config: &Config) -> Result<Self>;

    /// The edits for one envelope bound for `target`. They apply in order.
    /// An error is handled like a transport's [`Outcome::Retry`](crate::Outcome::Retry).
    fn inject(&mut self, envelope: &Envelope, target: &str) -> Result<Vec<HeaderEdit>>;
}

/// The cell an exported injector lives in between calls.
#[doc(hidden)]
pub type InjectorCell<T> = RefCell<Option<T>>;

#[doc(hidden)]
pub fn init<T: Injector>(
    cell: &'static LocalKey<InjectorCell<T>>,
    target: String,
    config: String,
) -> core::result::Result<(), String> {
    let config = Config::parse(&config)?;
    let instance = T::init(&target, &config)?;
    cell.with(|cell| *cell.borrow_mut() = Some(instance));
    Ok(())
}

#[doc(hidden)]
pub fn inject<T: Injector>(
    cell: &'static LocalKey<InjectorCell<T>>,
    envelope: Envelope,
    target: String,
) -> core::result::Result<Vec<HeaderEdit>, String> {
    cell.with(|cell| match cell.borrow_mut().as_mut() {
        Some(injector) => injector.inject(&envelope, &target),
        None => Err(Error::new("plugin not initialised")),
    })
    .map_err(Error::into_message)
}

/// Exports an [`Injector`] implementation as the component's
/// `outbox:relay/injector` interface.
///
/// ```ignore
/// outbox_relay_guest::export_injector!(MyInjector);
/// ```
///
/// An `inject` before a successful `init` answers `Err("plugin not initialised")`.
#[macro_export]
macro_rules! export_injector {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static INSTANCE: $crate::__private::InjectorCell<$ty> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct __OutboxRelayInjector;

            impl $crate::__private::injector_world::exports::outbox::relay::injector::Guest
                for __OutboxRelayInjector
            {
                fn init(
                    target: ::std::string::String,
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::injector_init::<$ty>(&INSTANCE, target, config)
                }

                fn inject(
                    envelope: $crate::__private::injector_world::outbox::relay::types::Envelope,
                    target: ::std::string::String,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<
                        $crate::__private::injector_world::outbox::relay::types::HeaderEdit,
                    >,
                    ::std::string::String,
                > {
                    $crate::__private::injector_inject::<$ty>(&INSTANCE, envelope, target)
                }
            }

            $crate::__private::injector_world::export_injector_world!(
                __OutboxRelayInjector with_types_in $crate::__private::injector_world
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stamp {
        value: String,
    }

    impl Injector for Stamp {
        fn init(_target: &str, config: &Config) -> Result<Self> {
            Ok(Stamp {
                value: config.get_str("value")?.to_owned(),
            })
        }

        fn inject(&mut self, envelope: &Envelope, target: &str) -> Result<Vec<HeaderEdit>> {
            if envelope.header("authorization").is_some() {
                return Err(Error::new("refusing raw credentials"));
            }
            Ok(vec![HeaderEdit::set(
                "x-stamp",
                format!("{}@{target}", self.value),
            )])
        }
    }

    thread_local! {
        static CELL: InjectorCell<Stamp> = const { RefCell::new(None) };
    }

    fn envelope(headers: Vec<(String, String)>) -> Envelope {
        Envelope {
            id: "a".into(),
            event_name: "e".into(),
            partition_key: None,
            payload: vec![],
            headers,
            attempt: 1,
            created_at_ms: 0,
        }
    }

    #[test]
    fn inject_before_init_is_an_error_then_edits_apply() {
        assert_eq!(
            inject(&CELL, envelope(vec![]), "t".into()),
            Err("plugin not initialised".to_owned())
        );
        assert!(init(&CELL, "t".into(), r#"{"value": "v"}"#.into()).is_ok());
        assert_eq!(
            inject(&CELL, envelope(vec![]), "t".into()),
            Ok(vec![HeaderEdit::set("x-stamp", "v@t")])
        );
        let creds = vec![("Authorization".to_owned(), "Bearer x".to_owned())];
        assert_eq!(
            inject(&CELL, envelope(creds), "t".into()),
            Err("refusing raw credentials".to_owned())
        );
    }
}
