//! Operations: logging, health, metrics.

pub mod prom;
pub mod shutdown;
