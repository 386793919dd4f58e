//! Shared network plumbing with no protocol knowledge.

pub mod http_server;
