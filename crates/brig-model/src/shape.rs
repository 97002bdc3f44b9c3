//! Errors in each provider's own shape, so agents and SDKs treat brig's
//! refusals like the provider's: OpenAI
//! `{"error":{"message","type","param","code"}}`, Anthropic
//! `{"type":"error","error":{"type","message"}}`; and the error events
//! that end a stream that failed midway.

use bytes::Bytes;
use serde_json::json;

use crate::config::Protocol;

/// One error answer of the gateway.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub status: u16,
    /// The brig rule that decided (`model:unknown`, `budget:session:rpm`).
    pub rule: &'static str,
    pub message: String,
    /// OpenAI's `code` (`model_not_found`), when there is one.
    pub code: Option<&'static str>,
    /// OpenAI's `type` when it differs from the status's default.
    pub openai_type: Option<&'static str>,
    pub retry_after: Option<u64>,
    /// `x-should-retry: false`: the official SDKs then give up at once.
    pub no_retry: bool,
    /// The rule as an owned string (budgets name their scope).
    pub rule_owned: Option<String>,
}

impl Failure {
    pub fn new(status: u16, rule: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            rule,
            message: message.into(),
            code: None,
            openai_type: None,
            retry_after: None,
            no_retry: false,
            rule_owned: None,
        }
    }
    pub fn code(mut self, c: &'static str) -> Failure {
        self.code = Some(c);
        self
    }
    pub fn kind(mut self, t: &'static str) -> Failure {
        self.openai_type = Some(t);
        self
    }
    pub fn rule(&self) -> &str {
        self.rule_owned.as_deref().unwrap_or(self.rule)
    }

    /// The body in `p`'s shape.
    pub fn body(&self, p: Protocol) -> Bytes {
        let v = match p {
            Protocol::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.openai_type.unwrap_or_else(|| openai_type(self.status)),
                "param": null,
                "code": self.code,
            }}),
            Protocol::Anthropic => json!({
                "type": "error",
                "error": {"type": anthropic_type(self.status), "message": self.message},
            }),
        };
        Bytes::from(v.to_string())
    }
}

fn openai_type(status: u16) -> &'static str {
    match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    }
}

pub(crate) fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// What ends a stream that failed midway, in the endpoint's own event
/// shape: the SDKs raise it as an API error instead of a silent truncation.
pub(crate) fn stream_error(endpoint: crate::Endpoint, status: u16, message: &str) -> Bytes {
    use crate::Endpoint;
    let s = match endpoint {
        Endpoint::Messages => {
            let v = json!({"type": "error", "error": {"type": anthropic_type(status), "message": message}});
            format!("event: error\ndata: {v}\n\n")
        }
        Endpoint::Responses => {
            let v =
                json!({"type": "error", "code": "server_error", "message": message, "param": null});
            format!("event: error\ndata: {v}\n\n")
        }
        _ => {
            let v = json!({"error": {"message": message, "type": openai_type(status), "param": null, "code": null}});
            format!("data: {v}\n\n")
        }
    };
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let f = Failure::new(404, "model:unknown", "no such model").code("model_not_found");
        let o: serde_json::Value = serde_json::from_slice(&f.body(Protocol::OpenAi)).unwrap();
        assert_eq!(o["error"]["code"], "model_not_found");
        assert_eq!(o["error"]["type"], "invalid_request_error");
        assert!(o["error"]["param"].is_null());
        let a: serde_json::Value = serde_json::from_slice(&f.body(Protocol::Anthropic)).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "not_found_error");
        assert_eq!(a["error"]["message"], "no such model");
    }
}
