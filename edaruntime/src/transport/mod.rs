//! Transports carry bytes, acks and naks; what to do with a message is decided in
//! [`crate::delivery`], once for all of them, and one consume driver serves both.

pub(crate) mod jetstream;
pub mod memory;
