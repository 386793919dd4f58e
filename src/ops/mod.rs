//! Operations: logging, health, metrics.

pub mod log;
