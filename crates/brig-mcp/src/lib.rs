//! brig's MCP server (docs/MCP.md): the Model Context Protocol over stdio
//! and streamable HTTP, so an MCP client (an agent outside the box) drives
//! a brig session as tools: create or attach, exec, files in /workspace,
//! the diff, plans, approvals, push and the pull request.
//!
//! The crate has no I/O of its own toward brig: every tool is calls of
//! brig's control-plane API through [`api::BrigApi`], made as the
//! principal that authenticated the MCP connection, so each one is
//! decided by the same policy, journaled and held for approval exactly as
//! the CLI's are. `brig mcp` (brig-cli) implements the trait with its API
//! client.

pub mod api;
pub mod http;
pub mod jsonrpc;
pub mod server;
pub mod stdio;
pub mod tools;

pub use api::{BrigApi, Method};
pub use server::{McpSession, LATEST_PROTOCOL_VERSION, PROTOCOL_VERSIONS};
