//! Shared network plumbing with no protocol knowledge.

pub mod http_server;

#[cfg(feature = "relay")]
pub mod tls_listener;
