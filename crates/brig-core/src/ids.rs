//! Identifiers. Session ids are random, lowercase and short enough to type.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::{Error, ErrorKind};

const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn random_token(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A session id: `s-` followed by 10 characters of an unambiguous alphabet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    pub fn generate() -> Self {
        SessionId(format!("s-{}", random_token(10)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The service principal every session runs as.
    pub fn principal(&self) -> String {
        format!("agent:{}", self.0)
    }
}

impl TryFrom<String> for SessionId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        let ok =
            s.len() == 12 && s.starts_with("s-") && s[2..].bytes().all(|b| ALPHABET.contains(&b));
        if ok {
            Ok(SessionId(s))
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("'{s}' is not a session id"),
            )
            .hint("session ids look like s-abcdefgh23; see `brig session list`"))
        }
    }
}

impl std::str::FromStr for SessionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        SessionId::try_from(s.to_string())
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        id.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task id given by the human (a ticket key, for example). Printable ASCII,
/// no spaces, at most 128 bytes, so it is safe in logs, paths and headers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TaskId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/#@+".contains(&b));
        if ok {
            Ok(TaskId(s))
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("task id {s:?} is not valid"),
            )
            .hint("use 1-128 characters of letters, digits and - _ . : / # @ +, e.g. JIRA-1234"))
        }
    }
}

impl std::str::FromStr for TaskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        TaskId::try_from(s.to_string())
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Exec ids are unique within a session: `x-` and 8 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExecId(pub String);

impl ExecId {
    pub fn generate() -> Self {
        ExecId(format!("x-{}", random_token(8)))
    }
}

impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_round_trip_and_reject_junk() {
        let id = SessionId::generate();
        assert_eq!(id.as_str().parse::<SessionId>().unwrap(), id);
        assert!("s-../../etc".parse::<SessionId>().is_err());
        assert!("nope".parse::<SessionId>().is_err());
        assert_eq!(id.principal(), format!("agent:{id}"));
    }

    #[test]
    fn task_ids_are_printable_and_bounded() {
        assert!("JIRA-1234".parse::<TaskId>().is_ok());
        assert!("a b".parse::<TaskId>().is_err());
        assert!("".parse::<TaskId>().is_err());
        assert!("x".repeat(129).parse::<TaskId>().is_err());
    }
}
