//! sdk
extern crate self as outbox_relay_guest;
mod bindings;
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::*;
    pub use wit_bindgen;
}
