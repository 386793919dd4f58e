//! The relay: the control plane agents poll and the MCP endpoint AI clients call.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod connector;
pub mod control_plane;
pub mod hub;
pub mod keys;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod state;
pub mod timestamp;
