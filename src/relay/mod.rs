//! The relay: the control plane agents poll and the MCP endpoint AI clients call.
//!
//! | module | one concept |
//! |---|---|
//! | `state` | orgs, tunnels, keys on disk: atomic store, lock, change watcher |
//! | `keys` | random secrets and ids, SHA-256 at rest, constant-time lookup |
//! | `auth` | which key may do what on which tunnel (and what errors reveal) |
//! | `auth_memo` | a keep-alive connection's last verdict, reused until the state changes |
//! | `queue` | one tunnel's waiting commands, pending answers, agent liveness |
//! | `affinity` | which agent instance owns a process-local channel's work (`proc_affinity`) |
//! | `alarms` | deadlines of parked handlers on one shared reactor timer |
//! | `hub` | the shared runtime context (state, queues, settings, audit, counters) |
//! | `control_plane` | metadata, long-poll, response posts (the agent side) |
//! | `connector` | `/v1/mcp` Streamable HTTP for AI clients, JSON or SSE answers |
//! | `audit` | one JSON line per MCP request, no payloads or secrets |
//! | `metrics` | counters and gauges for the metrics exporter |
//! | `server` | route table, listener (TCP or TLS), state reload, drain |
//! | `cli` | `mcp-tunnel relay` init, serve, tunnel, key, org |

pub mod affinity;
pub mod alarms;
pub mod audit;
pub mod auth;
pub mod auth_memo;
pub mod cli;
pub mod connector;
pub mod control_plane;
pub mod hub;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod state;
pub mod timestamp;
