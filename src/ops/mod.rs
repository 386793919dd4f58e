//! Operations: logging, health, metrics.

pub mod log;
pub mod pidfile;
pub mod prom;
pub mod shutdown;
