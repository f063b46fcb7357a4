//! Who signed what, and who may connect: Ed25519 key files and the in-memory registry
//! ([`keys`]), the endorsements that chain every key to the federation's root ([`chain`]),
//! the registry shared through the `sage_keys` bucket ([`directory`]), and a federation's
//! credentials, certificates and bundles made by `sagefed init` ([`federation`]), laid out on
//! several machines ([`topology`]); the directory's negative cache of unknown key ids
//! ([`unknown_keys`]).

pub mod chain;
pub mod directory;
pub mod federation;
pub mod keys;
pub mod topology;
pub mod unknown_keys;
