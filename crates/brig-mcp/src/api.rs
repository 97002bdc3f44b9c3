//! What the MCP server needs of brig: its control-plane HTTP API
//! (docs/API.md), called as the principal that authenticated the MCP
//! connection. The binary implements it with brig's CLI client; tests with
//! a fake. Every tool call is one or more of these calls, so the server
//! decides, journals and holds for approval exactly as it does for the CLI.

use std::future::Future;

use brig_core::Result;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// brig's API, as one caller. An error is the API's own (its kind, message
/// and hint), so a policy refusal reaches the MCP client as brig said it.
pub trait BrigApi: Send + Sync + 'static {
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> impl Future<Output = Result<Value>> + Send;
}

/// Percent-encode one query or path component (RFC 3986 unreserved kept).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn components_are_encoded() {
        assert_eq!(
            super::encode_component("brig/s-1/x y&z"),
            "brig%2Fs-1%2Fx%20y%26z"
        );
    }
}
