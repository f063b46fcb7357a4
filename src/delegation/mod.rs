//! Handing a task to another platform: the delegator's [`client`] (placement, lock, publish,
//! wait, settle) and the [`status`] service (status of an LCT or a task, cancel).

pub mod client;
pub mod status;
