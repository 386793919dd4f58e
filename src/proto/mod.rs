//! The sans-IO protocol core: plain types and functions over bytes and time.
//! Nothing here opens a socket, reads a clock implicitly or spawns a task.
//! Each module implements one rule of the wire contract (protocol.md).

pub mod channel;
pub mod command;
pub mod error_body;
pub mod failure;
pub mod headers;
pub mod json;
pub mod jsonrpc;
pub mod lines;
pub mod response;
pub mod retry;
pub mod server_info;
pub mod sse;
pub mod timeout;

#[cfg(test)]
pub(crate) mod testutil;
