//! What goes on the wire and the values inside it: identities, amounts, time, the two signed
//! messages and the envelope that signs them. Pure: no `async_nats`, no `tokio`, no I/O.

pub mod atp;
pub mod clock;
pub mod envelope;
pub mod lct;
pub(crate) mod limits;
pub mod proof;
pub mod task;
pub mod verdict;
