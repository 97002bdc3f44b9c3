//! The request body: the few fields the gateway reads (`model`, `stream`,
//! `stream_options`) and a targeted rewrite of them. The body is never
//! re-serialized: only the byte span of the top-level `model` value (and
//! `stream_options`) is replaced, so the rest goes upstream exactly as the
//! client wrote it.

use bytes::Bytes;
use serde::Deserialize;

/// What the gateway reads of a request.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Head {
    pub model: Option<String>,
    pub stream: bool,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
}

#[derive(Deserialize)]
struct RawHead {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    stream_options: Option<serde_json::Value>,
}

/// Parses (and so validates) the whole body; the error says what is wrong
/// in serde_json's words (line and column).
pub(crate) fn parse_head(body: &[u8]) -> Result<Head, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("the request body must be a JSON object".into());
    }
    let raw: RawHead = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let model = match raw.model {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err("`model` must be a string".into()),
    };
    let stream = match raw.stream {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(_) => return Err("`stream` must be a boolean".into()),
    };
    let include_usage = raw
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok(Head {
        model,
        stream,
        include_usage,
    })
}

/// Byte spans of top-level values in a body already parsed by
/// [`parse_head`] (so well-formed JSON).
#[derive(Debug, Default, PartialEq)]
struct Spans {
    /// After the opening `{`.
    open: usize,
    model: Option<(usize, usize)>,
    stream_options: Option<(usize, usize)>,
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `i` (a `"`).
fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

fn skip_value(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{') | Some(b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            b.len()
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            j
        }
    }
}

fn spans(b: &[u8]) -> Spans {
    let mut s = Spans::default();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return s;
    }
    i += 1;
    s.open = i;
    loop {
        i = ws(b, i);
        if i >= b.len() || b[i] == b'}' || b[i] != b'"' {
            return s;
        }
        let kend = skip_string(b, i);
        let key = &b[i + 1..kend.saturating_sub(1)];
        i = ws(b, kend);
        if b.get(i) != Some(&b':') {
            return s;
        }
        i = ws(b, i + 1);
        let vend = skip_value(b, i);
        match key {
            b"model" => s.model = Some((i, vend)),
            b"stream_options" => s.stream_options = Some((i, vend)),
            _ => {}
        }
        i = ws(b, vend);
        if b.get(i) == Some(&b',') {
            i += 1;
        } else {
            return s;
        }
    }
}

/// `body` with `model` set to `model` (when given) and
/// `stream_options.include_usage` set to true (when `usage`). The original
/// bytes when nothing changes.
pub(crate) fn rewrite(body: &Bytes, model: Option<&str>, usage: bool) -> Bytes {
    if model.is_none() && !usage {
        return body.clone();
    }
    let sp = spans(body);
    // Edits as (start, end, replacement), applied in order.
    let mut edits: Vec<(usize, usize, String)> = Vec::with_capacity(2);
    if let Some(m) = model {
        let v = serde_json::Value::String(m.to_string()).to_string();
        match sp.model {
            Some((a, b)) => edits.push((a, b, v)),
            None => edits.push((sp.open, sp.open, format!("\"model\":{v},"))),
        }
    }
    if usage {
        match sp.stream_options {
            Some((a, b)) => {
                let mut o = serde_json::from_slice::<serde_json::Value>(&body[a..b])
                    .ok()
                    .filter(|v| v.is_object())
                    .unwrap_or_else(|| serde_json::json!({}));
                o["include_usage"] = serde_json::Value::Bool(true);
                edits.push((a, b, o.to_string()));
            }
            None => edits.push((
                sp.open,
                sp.open,
                "\"stream_options\":{\"include_usage\":true},".into(),
            )),
        }
    }
    edits.sort_by_key(|e| e.0);
    let extra: usize = edits.iter().map(|e| e.2.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for (a, b, r) in edits {
        out.extend_from_slice(&body[at..a]);
        out.extend_from_slice(r.as_bytes());
        at = b;
    }
    out.extend_from_slice(&body[at..]);
    // An object that was `{}` gets a trailing comma from an insertion:
    // `{"model":"x",}` is not JSON.
    fix_trailing_comma(&mut out);
    Bytes::from(out)
}

fn fix_trailing_comma(out: &mut Vec<u8>) {
    let Some(close) = out.iter().rposition(|&c| c == b'}') else {
        return;
    };
    let mut j = close;
    while j > 0 && out[j - 1].is_ascii_whitespace() {
        j -= 1;
    }
    if j > 0 && out[j - 1] == b',' {
        out.remove(j - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_errors() {
        let h = parse_head(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                model: Some("m".into()),
                stream: true,
                include_usage: true
            }
        );
        assert!(parse_head(b"[1]").unwrap_err().contains("JSON object"));
        assert!(parse_head(b"{\"model\":")
            .unwrap_err()
            .contains("invalid JSON"));
        assert!(parse_head(br#"{"model":1}"#)
            .unwrap_err()
            .contains("string"));
        // Two `model` fields would let the upstream read another one.
        assert!(parse_head(br#"{"model":"a","model":"b"}"#).is_err());
    }

    #[test]
    fn rewrite_touches_only_what_it_must() {
        let b = Bytes::from_static(
            br#"{ "messages": [{"content": "say \"model\": {x}"}], "model" : "coder", "stream": true }"#,
        );
        let out = rewrite(&b, Some("qwen\"2"), false);
        let s = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            s,
            r#"{ "messages": [{"content": "say \"model\": {x}"}], "model" : "qwen\"2", "stream": true }"#
        );
        let out = rewrite(&b, None, true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "coder");
        let b = Bytes::from_static(br#"{"model":"a","stream_options":{"x":1}}"#);
        let v: serde_json::Value = serde_json::from_slice(&rewrite(&b, Some("b"), true)).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x":1,"include_usage":true})
        );
        assert_eq!(v["model"], "b");
        let b = Bytes::from_static(b"{}");
        let v: serde_json::Value = serde_json::from_slice(&rewrite(&b, Some("b"), true)).unwrap();
        assert_eq!(v["model"], "b");
        assert!(rewrite(&b, None, false).as_ptr() == b.as_ptr());
    }
}
