//! Handing a task to another platform: the delegator's [`client`] (lock, publish, wait,
//! settle), where the task goes (`placement`, pure), the seed's [`scenarios`] as a table,
//! and the [`status`] service (status of an LCT or a task, cancel).

pub mod client;
mod placement;
pub mod scenarios;
pub mod status;
