//! `SecretValue`: the one type that holds a secret's bytes.

use std::fmt;

use zeroize::Zeroizing;

/// A secret's bytes, wiped from memory on drop. `Debug` prints
/// `[REDACTED]` and there is no `Display`, `Serialize` or `PartialEq`, so a
/// value cannot end up in a log line, an error or a JSON document by
/// accident: reading it takes an explicit `expose`.
///
/// Wiping is best effort: the HTTP and JSON layers that received the value
/// held their own transient copies.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(Zeroizing::new(bytes))
    }

    /// Takes the string's buffer without copying it.
    pub fn from_string(s: String) -> Self {
        SecretValue(Zeroizing::new(s.into_bytes()))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, when it is UTF-8 (tokens and passwords are).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Response structs deserialize a secret field straight into a
/// `SecretValue`, so the value is never a loose `String`.
impl<'de> serde::Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretValue::from_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let v = SecretValue::from_string("hunter2-canary".into());
        assert_eq!(format!("{v:?}"), "[REDACTED]");
        assert_eq!(format!("{:?}", Some(v.clone())), "Some([REDACTED])");
        assert_eq!(v.expose_str(), Some("hunter2-canary"));
        let v: SecretValue = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(v.expose(), b"x");
    }
}
