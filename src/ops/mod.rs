//! Operations: logging, health, metrics, the allocator.

pub mod heap;
pub mod log;
pub mod pidfile;
pub mod prom;
pub mod shutdown;
