//! Operations: logging, health, metrics.

pub mod log;
pub mod shutdown;
