//! The secret sources, one module a kind.

pub mod aws;
pub mod azure;
pub mod env;
pub mod file;
pub mod gcp;
mod oauth;
pub mod vault;

use crate::SecretError;

/// Checks a key made of path-like segments (`app/db`, `prod-token`): no
/// empty, `.` or `..` segment, only letters, digits and `-_.@+=` (`extra`
/// adds more), so a key cannot escape its mount or directory or smuggle a
/// query into a URL.
pub(crate) fn check_key(
    upstream: &str,
    key: &str,
    slashes: bool,
    extra: &str,
) -> Result<(), SecretError> {
    let bad = |why: &str| {
        Err(SecretError::config(format!(
            "{upstream}: key `{key}` {why}"
        )))
    };
    if key.is_empty() || key.len() > 512 {
        return bad("must be 1 to 512 characters");
    }
    for seg in key.split('/') {
        if !slashes && seg.len() != key.len() {
            return bad("may not contain `/`");
        }
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("has an empty, `.` or `..` path segment");
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.@+=".contains(*c) || extra.contains(*c)))
        {
            return bad(&format!("contains `{c}`, which is not allowed here"));
        }
    }
    Ok(())
}

/// Checks a one-word name (a project, a secret name, a tenant id): 1 to
/// `max` letters, digits, `-` and the characters of `extra`.
pub(crate) fn check_word(what: &str, v: &str, max: usize, extra: &str) -> Result<(), SecretError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(c));
    if ok {
        Ok(())
    } else {
        Err(SecretError::config(format!(
            "{what} `{v}` may hold only letters, digits and `-{extra}`"
        )))
    }
}

/// Splits `name#field` (a JSON field of the secret to return).
pub(crate) fn split_field(key: &str) -> (&str, Option<&str>) {
    match key.rsplit_once('#') {
        Some((k, f)) if !f.is_empty() => (k, Some(f)),
        _ => (key, None),
    }
}

/// The `field` of a JSON object secret, as a value: strings as they are,
/// other JSON as its text.
pub(crate) fn pick_field(
    upstream: &str,
    key: &str,
    mut data: serde_json::Value,
    field: Option<&str>,
) -> Result<crate::SecretValue, SecretError> {
    use crate::SecretValue;
    let Some(field) = field else {
        return Ok(match data {
            serde_json::Value::String(s) => SecretValue::from_string(s),
            other => SecretValue::from_string(other.to_string()),
        });
    };
    let Some(obj) = data.as_object_mut() else {
        return Err(SecretError::Protocol {
            upstream: upstream.to_string(),
            detail: format!(
                "`{key}`: the secret is not a JSON object, so it has no field `{field}`"
            ),
        });
    };
    match obj.remove(field) {
        Some(serde_json::Value::String(s)) => Ok(SecretValue::from_string(s)),
        Some(serde_json::Value::Null) | None => {
            let mut names: Vec<&String> = obj.keys().collect();
            names.sort();
            Err(SecretError::NotFound {
                upstream: upstream.to_string(),
                key: key.to_string(),
                message: format!(
                    "the secret has no field `{field}` (its fields: {})",
                    names
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
        Some(other) => Ok(SecretValue::from_string(other.to_string())),
    }
}
