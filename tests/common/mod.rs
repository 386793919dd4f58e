//! Shared harness for the network-edge tests: external tools (found or
//! installed), a private PKI made with the `openssl` CLI, and a small
//! blocking TLS/plain HTTP server on loopback.
#![allow(dead_code)]

pub mod pki;
pub mod procs;
pub mod server;
pub mod tinyproxy;
pub mod tools;
