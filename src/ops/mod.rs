//! Operations: logging, health, metrics.

pub mod log;
pub mod prom;
pub mod shutdown;
