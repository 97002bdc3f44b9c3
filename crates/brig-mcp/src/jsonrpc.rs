//! JSON-RPC 2.0 as MCP uses it: one message per line on stdio, one message
//! (or, for protocol 2025-03-26, a batch) per HTTP POST.

use serde::Serialize;
use serde_json::{json, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }
    pub fn parse(message: impl Into<String>) -> RpcError {
        RpcError::new(PARSE_ERROR, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_REQUEST, message)
    }
    pub fn method_not_found(method: &str) -> RpcError {
        RpcError::new(METHOD_NOT_FOUND, format!("method not found: {method}"))
    }
    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }
    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(INTERNAL_ERROR, message)
    }
    pub fn with_data(mut self, data: Value) -> RpcError {
        self.data = Some(data);
        self
    }
}

/// One incoming message, classified.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A request: it gets exactly one response with the same id.
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    /// A notification: no response.
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// A response to something we sent (we send no requests: ignored).
    Response,
    /// Not a valid JSON-RPC message; answered with this error (id null
    /// unless the id could be read).
    Invalid { id: Value, error: RpcError },
}

/// What one POST body or one stdio line holds.
#[derive(Debug)]
pub enum Incoming {
    Single(Message),
    Batch(Vec<Message>),
}

/// Parse bytes into messages. Bad JSON is a parse error (`-32700`); JSON
/// that is not a JSON-RPC message is an invalid request (`-32600`).
pub fn parse(bytes: &[u8]) -> Result<Incoming, RpcError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| RpcError::parse(format!("parse error: invalid JSON: {e}")))?;
    match v {
        Value::Array(items) if items.is_empty() => {
            Err(RpcError::invalid_request("invalid request: empty batch"))
        }
        Value::Array(items) => Ok(Incoming::Batch(items.into_iter().map(classify).collect())),
        v => Ok(Incoming::Single(classify(v))),
    }
}

/// Classify one JSON value as a JSON-RPC 2.0 message.
pub fn classify(v: Value) -> Message {
    let Value::Object(mut m) = v else {
        return invalid(
            Value::Null,
            "invalid request: a message must be a JSON object",
        );
    };
    let id = m.remove("id");
    // An id must be a string or a number (null is allowed by JSON-RPC only
    // for errors; MCP forbids it in requests).
    let id_ok = matches!(id, None | Some(Value::String(_)) | Some(Value::Number(_)));
    let shown_id = match &id {
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        _ => Value::Null,
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(shown_id, "invalid request: \"jsonrpc\" must be \"2.0\"");
    }
    if !id_ok {
        return invalid(
            Value::Null,
            "invalid request: \"id\" must be a string or a number",
        );
    }
    let params = m.remove("params");
    if let Some(p) = &params {
        if !(p.is_object() || p.is_array()) {
            return invalid(
                shown_id,
                "invalid request: \"params\" must be an object or an array",
            );
        }
    }
    match (m.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) => Message::Request { id, method, params },
        (Some(Value::String(method)), None) => Message::Notification { method, params },
        (Some(_), _) => invalid(shown_id, "invalid request: \"method\" must be a string"),
        (None, Some(_)) if m.contains_key("result") || m.contains_key("error") => Message::Response,
        (None, _) => invalid(shown_id, "invalid request: no \"method\""),
    }
}

fn invalid(id: Value, msg: &str) -> Message {
    Message::Invalid {
        id,
        error: RpcError::invalid_request(msg),
    }
}

/// A success response.
pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn error(id: &Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": e})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified() {
        let m = classify(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}));
        assert_eq!(
            m,
            Message::Request {
                id: json!(1),
                method: "ping".into(),
                params: None
            }
        );
        let m = classify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        assert!(matches!(m, Message::Notification { .. }));
        let m = classify(json!({"jsonrpc": "2.0", "id": "a", "result": {}}));
        assert_eq!(m, Message::Response);
    }

    #[test]
    fn bad_json_is_a_parse_error() {
        let e = parse(b"{\"jsonrpc\": \"2.0\", ").unwrap_err();
        assert_eq!(e.code, PARSE_ERROR);
        let e = parse(b"[]").unwrap_err();
        assert_eq!(e.code, INVALID_REQUEST);
    }

    #[test]
    fn malformed_messages_are_invalid_requests() {
        for (v, id) in [
            (json!("hello"), Value::Null),
            (json!({"id": 1, "method": "ping"}), json!(1)),
            (
                json!({"jsonrpc": "1.0", "id": 2, "method": "ping"}),
                json!(2),
            ),
            (
                json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}),
                Value::Null,
            ),
            (json!({"jsonrpc": "2.0", "id": 3, "method": 7}), json!(3)),
            (
                json!({"jsonrpc": "2.0", "id": 4, "method": "x", "params": 5}),
                json!(4),
            ),
            (json!({"jsonrpc": "2.0", "id": 5}), json!(5)),
        ] {
            match classify(v.clone()) {
                Message::Invalid { id: got, error } => {
                    assert_eq!(error.code, INVALID_REQUEST, "{v}");
                    assert_eq!(got, id, "{v}");
                }
                other => panic!("{v} was {other:?}"),
            }
        }
    }
}
