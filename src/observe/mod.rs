//! Seeing the federation: Prometheus metrics ([`metrics`]), the dashboard's live view fed by
//! KV watches and stream consumers ([`feed`]), and the HTTP server for both ([`server`]).

pub mod feed;
pub mod metrics;
pub mod server;
