//! Everything that names or creates things on NATS: subjects, streams and buckets
//! ([`subjects`]), who may use which ([`permissions`]), their creation ([`infra`]), the one
//! connection setup ([`connection`]), the server's authorization and TLS config
//! ([`server_config`]), the server configs of several machines ([`topology`]), a real `nats-server` process ([`server`]), and the one
//! compare-and-swap update of a KV record ([`cas`]).

pub mod cas;
pub mod connection;
pub mod infra;
pub mod permissions;
pub mod server;
pub mod server_config;
pub mod subjects;
pub mod topology;
