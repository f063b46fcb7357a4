//! Who signed what, and who may connect: Ed25519 key files and the in-memory registry
//! ([`keys`]), the endorsements that chain every key to the federation's root ([`chain`]),
//! the registry shared through the `sage_keys` bucket ([`directory`]), and a federation's
//! credentials, certificates and bundles made by `sagefed init` ([`federation`]).

pub mod chain;
pub mod directory;
pub mod federation;
pub mod keys;
