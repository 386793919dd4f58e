//! Operations: logging, health, metrics.

pub mod prom;
