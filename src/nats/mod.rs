//! Everything that names or creates things on NATS: subjects, streams and buckets
//! ([`subjects`]), their creation and the connection ([`infra`]), and a real `nats-server`
//! process ([`server`]).

pub mod infra;
pub mod server;
pub mod subjects;
