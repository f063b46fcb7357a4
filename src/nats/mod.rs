//! Everything that names or creates things on NATS: subjects, streams and buckets
//! ([`subjects`]), their creation and the connection ([`infra`]), and a real `nats-server`
//! process ([`server`]), and the one compare-and-swap update of a KV record ([`cas`]).

pub mod cas;
pub mod infra;
pub mod server;
pub mod subjects;
