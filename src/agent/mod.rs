//! The agent runtime: poll the control plane, forward each command to the MCP
//! target, post the answers back.
