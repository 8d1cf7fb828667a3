//! The functional core: pure decisions, no I/O. Shells feed it inputs and run its actions.

pub mod build;
pub mod derive;
pub mod fleet;
pub mod hold;
pub mod lifecycle;
pub mod policy;
pub mod signal;
pub mod time;
pub mod transitions;
pub mod wave;
pub mod window;

#[cfg(test)]
mod tests;
