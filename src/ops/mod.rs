//! Operations: logging, health, metrics.

pub mod shutdown;
