//! The engine under its first name: [`crate::engine`] re-exported, so `reconcile::…` paths keep
//! working.

pub use crate::engine::*;
