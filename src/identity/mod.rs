//! Who signed what: Ed25519 key files and the in-memory registry ([`keys`]), and the registry
//! shared through the `sage_keys` bucket ([`directory`]).

pub mod directory;
pub mod keys;
