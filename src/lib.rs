//! mcp-tunnel: an outbound-only agent and a self-hosted relay for the Secure
//! MCP Tunnel protocol.
//!
//! Layout (see docs/design.md):
//! - [`proto`]: the sans-IO protocol core (bytes and explicit time in, decisions out).
//! - [`agent`]: the poll → forward → respond runtime.
//! - [`relay`]: the self-hosted control plane and connector endpoint (feature `relay`).
//! - [`net`]: shared plumbing: TLS trust, the HTTP/1.1 server driver.
//! - [`ops`]: logging, health, metrics.

pub mod cli;
pub mod net;
pub mod ops;
pub mod proto;

#[cfg(feature = "agent")]
pub mod agent;

#[cfg(feature = "relay")]
pub mod relay;

/// The sample MCP server used by `make run` and the tests.
#[cfg(feature = "relay")]
pub mod sample;
