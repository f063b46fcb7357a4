//! Executing tasks: operation handlers live in [`ops`].

pub mod ops;
