//! Operations: logging, health, metrics.
