//! API tokens for automation (issue 7; docs/IDENTITY.md): the store keeps
//! what brig-identity's `TokenRecord` is, plus the owner's roles and groups
//! at issue time. Never the token: only its SHA-256 (hex), which is how a
//! presented token is found. Issuing and revoking append their journal
//! events in the same transaction (through the group-commit writer's
//! [`Tx`]); `last_used` is a plain update.

use brig_core::event::Event;
use brig_core::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::writer::Tx;
use crate::{db_err, Store};

/// One API token's row. `hash` is never serialized: no answer of the API
/// carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiTokenRow {
    /// `tok-` and 16 hex digits.
    pub id: String,
    /// The owner's principal id.
    pub principal: String,
    pub name: String,
    /// SHA-256 of the token, 64 hex digits.
    #[serde(skip_serializing)]
    pub hash: String,
    /// RFC 3339 UTC.
    pub created: String,
    pub expires: String,
    pub last_used: Option<String>,
    pub revoked: Option<String>,
    /// The owner's roles and groups when the token was issued: what a
    /// request with it acts as.
    pub roles: Vec<String>,
    pub groups: Vec<String>,
}

const COLUMNS: &str =
    "id, principal, name, hash, created, expires, last_used, revoked, roles, groups_json";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(ApiTokenRow, String, String)> {
    Ok((
        ApiTokenRow {
            id: r.get(0)?,
            principal: r.get(1)?,
            name: r.get(2)?,
            hash: r.get(3)?,
            created: r.get(4)?,
            expires: r.get(5)?,
            last_used: r.get(6)?,
            revoked: r.get(7)?,
            roles: vec![],
            groups: vec![],
        },
        r.get(8)?,
        r.get(9)?,
    ))
}

fn finish((mut row, roles, groups): (ApiTokenRow, String, String)) -> Result<ApiTokenRow> {
    let list = |t: &str| -> Result<Vec<String>> {
        serde_json::from_str(t)
            .map_err(|e| Error::internal(format!("api token {}: roles/groups: {e}", row.id)))
    };
    row.roles = list(&roles)?;
    row.groups = list(&groups)?;
    Ok(row)
}

fn check_hash(hash: &str) -> Result<()> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::internal(
            "an API token hash is 64 hex digits (SHA-256); refusing to store anything else",
        ))
    }
}

fn insert_on(conn: &Connection, row: &ApiTokenRow) -> Result<()> {
    check_hash(&row.hash)?;
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    conn.execute(
        &format!(
            "INSERT INTO api_tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            row.id,
            row.principal,
            row.name,
            row.hash.to_ascii_lowercase(),
            row.created,
            row.expires,
            row.last_used,
            row.revoked,
            json(&row.roles),
            json(&row.groups),
        ],
    )
    .map_err(db_err("insert api token"))?;
    Ok(())
}

impl Tx<'_> {
    /// A new token's row and its `token.issue` event, in one transaction.
    pub fn insert_api_token(&self, row: &ApiTokenRow, ev: &Event) -> Result<()> {
        insert_on(self.conn, row)?;
        self.append_event(ev).map(|_| ())
    }

    /// Revoke a token at `at` (RFC 3339) and append `ev`, if it was not
    /// revoked already. Returns whether this call revoked it (a second
    /// revocation changes nothing and journals nothing).
    pub fn revoke_api_token(&self, id: &str, at: &str, ev: &Event) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE api_tokens SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                params![id, at],
            )
            .map_err(db_err("revoke api token"))?;
        if n == 0 {
            return Ok(false);
        }
        self.append_event(ev)?;
        Ok(true)
    }
}

impl Store {
    /// The token whose SHA-256 is `hash` (hex), revoked and expired ones
    /// included (the caller decides, and says why it refused).
    pub fn api_token_by_hash(&self, hash: &str) -> Result<Option<ApiTokenRow>> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM api_tokens WHERE hash = ?1"),
            params![hash.to_ascii_lowercase()],
            from_row,
        )
        .optional()
        .map_err(db_err("read api token"))?
        .map(finish)
        .transpose()
    }

    pub fn api_token(&self, id: &str) -> Result<Option<ApiTokenRow>> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM api_tokens WHERE id = ?1"),
            params![id],
            from_row,
        )
        .optional()
        .map_err(db_err("read api token"))?
        .map(finish)
        .transpose()
    }

    /// The tokens of `principal` (every principal's with `None`), oldest
    /// first.
    pub fn api_tokens(&self, principal: Option<&str>) -> Result<Vec<ApiTokenRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM api_tokens WHERE ?1 IS NULL OR principal = ?1
                 ORDER BY created, id"
            ))
            .map_err(db_err("list api tokens"))?;
        let rows = st
            .query_map(params![principal], from_row)
            .map_err(db_err("list api tokens"))?;
        let mut out = vec![];
        for r in rows {
            out.push(finish(r.map_err(db_err("list api tokens"))?)?);
        }
        Ok(out)
    }

    /// Record that a token was used at `at` (RFC 3339).
    pub fn touch_api_token(&self, id: &str, at: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE api_tokens SET last_used = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map_err(db_err("record api token use"))?;
        Ok(())
    }

    /// [`Tx::insert_api_token`] outside the group-commit writer (tests,
    /// tools).
    pub fn insert_api_token(&self, row: &ApiTokenRow, ev: &Event) -> Result<()> {
        let red = self.masks();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin"))?;
        insert_on(&tx, row)?;
        crate::append_events_on(&tx, &red, std::slice::from_ref(ev))?;
        tx.commit().map_err(db_err("commit api token"))
    }
}

#[cfg(test)]
mod tests {
    use brig_core::event::Outcome;

    use super::*;

    fn row(id: &str, principal: &str, hash: &str) -> ApiTokenRow {
        ApiTokenRow {
            id: id.into(),
            principal: principal.into(),
            name: "ci".into(),
            hash: hash.into(),
            created: "2026-01-01T00:00:00Z".into(),
            expires: "2026-02-01T00:00:00Z".into(),
            last_used: None,
            revoked: None,
            roles: vec!["developer".into()],
            groups: vec!["team-a".into()],
        }
    }

    #[test]
    fn tokens_are_found_by_hash_listed_by_owner_touched_and_revoked_once() {
        let s = Store::open_in_memory().unwrap();
        let h1 = "ab".repeat(32);
        let h2 = "cd".repeat(32);
        s.insert_api_token(
            &row("tok-1", "local:alice", &h1),
            &Event::new("token.issue", Outcome::Success),
        )
        .unwrap();
        s.insert_api_token(
            &row("tok-2", "local:bob", &h2),
            &Event::new("token.issue", Outcome::Success),
        )
        .unwrap();
        // Same hash twice is refused (UNIQUE), a non-hash is refused.
        assert!(s
            .insert_api_token(
                &row("tok-3", "local:bob", &h2),
                &Event::new("token.issue", Outcome::Success)
            )
            .is_err());
        assert!(s
            .insert_api_token(
                &row("tok-4", "local:bob", "brig_pat_x"),
                &Event::new("token.issue", Outcome::Success)
            )
            .is_err());
        let got = s.api_token_by_hash(&h1.to_uppercase()).unwrap().unwrap();
        assert_eq!(got, row("tok-1", "local:alice", &h1));
        assert_eq!(s.api_token_by_hash(&"ee".repeat(32)).unwrap(), None);
        assert_eq!(s.api_tokens(Some("local:bob")).unwrap().len(), 1);
        assert_eq!(s.api_tokens(None).unwrap().len(), 2);
        s.touch_api_token("tok-1", "2026-01-02T00:00:00Z").unwrap();
        assert_eq!(
            s.api_token("tok-1").unwrap().unwrap().last_used.as_deref(),
            Some("2026-01-02T00:00:00Z")
        );
        // The serialized row never carries the hash.
        let v = serde_json::to_value(&got).unwrap();
        assert!(
            v.get("hash").is_none() && !v.to_string().contains(&h1),
            "{v}"
        );

        let s = std::sync::Arc::new(s);
        let events_before = s.events(None).unwrap().len();
        let w = crate::Writer::spawn(s.clone(), crate::WriterOptions::default()).unwrap();
        let revoke = |at: &'static str| {
            w.write_blocking(move |tx| {
                tx.revoke_api_token("tok-1", at, &Event::new("token.revoke", Outcome::Success))
            })
            .unwrap()
        };
        assert!(revoke("2026-01-03T00:00:00Z"));
        assert!(!revoke("2026-01-04T00:00:00Z"), "revoked once");
        assert_eq!(
            s.api_token("tok-1").unwrap().unwrap().revoked.as_deref(),
            Some("2026-01-03T00:00:00Z")
        );
        assert_eq!(s.events(None).unwrap().len(), events_before + 1);
    }
}
