//! The relay: the control plane agents poll and the MCP endpoint AI clients call.

pub mod cli;
