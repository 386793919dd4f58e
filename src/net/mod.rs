//! Shared network plumbing with no protocol knowledge.

pub mod http_server;
pub mod proxy;

#[cfg(feature = "relay")]
pub mod tls_listener;
