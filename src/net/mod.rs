//! Shared network plumbing with no protocol knowledge.

pub mod cert_names;
pub mod der;
pub mod http_server;
#[cfg(unix)]
pub mod listen_addr;
pub mod proxy;
pub mod tls_client;

#[cfg(feature = "relay")]
pub mod tls_listener;
