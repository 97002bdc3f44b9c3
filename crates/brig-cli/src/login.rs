//! `brig login`, `brig logout`, `brig whoami` (issue 7; docs/IDENTITY.md),
//! and the stored login the client sends to a TCP endpoint.
//!
//! `brig login` runs the OAuth 2.0 device authorization grant (RFC 8628)
//! against the IdP through brig-identity: it prints where to go and the
//! code to type, polls while the human approves, verifies the ID token it
//! gets (the IdP's JWKS, issuer, audience, expiry), and keeps the ID and
//! refresh tokens in `$XDG_CONFIG_HOME/brig/credentials.json` (mode 0600;
//! a file others can read is refused, not used). The client then sends
//! the ID token as `Authorization: Bearer` over TCP, refreshed with the
//! refresh token once it has expired.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use brig_core::{Error, ErrorKind, Result};
use brig_identity::{IdentityError, OidcClient, OidcConfig};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::output::Out;
use crate::term::Spinner;

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The IdP's issuer URL (default: BRIG_OIDC_ISSUER, else what the
    /// server's GET /v1/identity names).
    #[arg(long, env = "BRIG_OIDC_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// The OAuth client id brig is registered as at the IdP.
    #[arg(long, env = "BRIG_OIDC_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
    /// Extra CA certificates (PEM) to trust for the IdP.
    #[arg(long, env = "BRIG_OIDC_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

/// What `brig login` keeps. Debug never shows a token.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub issuer: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `oidc:<iss>#<sub>`.
    pub principal: String,
    pub name: String,
    pub id_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The ID token's `exp` (unix seconds).
    pub expires_at: i64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("issuer", &self.issuer)
            .field("principal", &self.principal)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// An ID token this close to its expiry is refreshed before it is sent.
const REFRESH_MARGIN_SECS: i64 = 30;

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `$XDG_CONFIG_HOME/brig/credentials.json`, else `~/.config/brig/...`.
pub fn credentials_path() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or_else(|| {
            Error::invalid("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the login")
                .hint("set XDG_CONFIG_HOME to a directory of yours")
        })?;
    Ok(base.join("brig").join("credentials.json"))
}

/// The stored login, if any. A file that others can read is refused: the
/// tokens in it may already be someone else's.
pub fn load() -> Result<Option<Credentials>> {
    let path = credentials_path()?;
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Unauthorized,
            format!(
                "{} is readable by other users (mode {mode:o}); brig will not use it",
                path.display()
            ),
        )
        .hint(format!(
            "the tokens in it may have leaked: run `brig logout` and `brig login` again (or chmod 600 {})",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::invalid(format!("{} is not a brig login: {e}", path.display()))
            .hint("run `brig logout` and `brig login` again")
    })
}

/// Write the login: created 0600 under a 0700 directory, replaced whole.
pub fn save(c: &Credentials) -> Result<PathBuf> {
    let path = credentials_path()?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let io = |what: &str, e: std::io::Error| {
        Error::internal(format!("cannot {what} {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod", e))?;
    let tmp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("write in", e))?;
    let text = serde_json::to_vec_pretty(c).map_err(|e| Error::internal(e.to_string()))?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(|e| io("write in", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("write in", e))?;
    Ok(path)
}

fn identity_error(e: IdentityError) -> Error {
    let kind = match &e {
        IdentityError::Config(_)
        | IdentityError::InsecureUrl { .. }
        | IdentityError::IssuerMismatch { .. }
        | IdentityError::NotSupported(_) => ErrorKind::InvalidInput,
        IdentityError::Unavailable { .. } | IdentityError::Tls { .. } => ErrorKind::Unavailable,
        IdentityError::Timeout { .. } | IdentityError::DeviceExpired => ErrorKind::Timeout,
        IdentityError::AccessDenied { .. } => ErrorKind::Denied,
        _ => ErrorKind::Unauthorized,
    };
    Error::new(kind, e.to_string())
}

fn oidc_config(issuer: &str, client_id: &str, ca_file: Option<PathBuf>) -> OidcConfig {
    let mut cfg = OidcConfig::new(issuer, client_id);
    cfg.ca_file = ca_file;
    cfg
}

/// `brig login`.
pub async fn login(c: &Client, a: &LoginArgs, out: Out) -> Result<i32> {
    let (issuer, client_id) = match (&a.issuer, &a.client_id) {
        (Some(i), Some(id)) => (i.clone(), id.clone()),
        _ => {
            // Ask the server which IdP it trusts (no credential needed).
            let hint = c.anonymous().call_value::<()>(hyper::Method::GET, "/v1/identity", None).await.map_err(|e| {
                e.context("brig login needs --issuer and --client-id, or a server to ask (GET /v1/identity)")
            })?;
            let oidc = &hint["oidc"];
            let from_server = |k: &str| oidc[k].as_str().map(str::to_string);
            match (
                a.issuer.clone().or_else(|| from_server("issuer")),
                a.client_id.clone().or_else(|| from_server("client_id")),
            ) {
                (Some(i), Some(id)) => (i, id),
                _ => {
                    return Err(Error::invalid(
                        "the server has no [identity.oidc]: there is no IdP to log in with",
                    )
                    .hint("on the server's host use the unix socket (local users), or pass --issuer and --client-id"))
                }
            }
        }
    };
    let oidc = OidcClient::discover(oidc_config(&issuer, &client_id, a.ca_file.clone()))
        .await
        .map_err(identity_error)?;
    let auth = oidc.start_device_flow().await.map_err(identity_error)?;
    // Always shown (on stderr, so --json output stays one document): the
    // login cannot go on without the human reading it.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "To log in, open {} and enter the code {}",
        auth.verification_uri, auth.user_code
    );
    if let Some(u) = &auth.verification_uri_complete {
        let _ = writeln!(err, "(or open {u})");
    }
    drop(err);
    let spin = Spinner::start(
        "waiting for the login to be approved",
        !out.json && !out.quiet,
    );
    let r = oidc.poll_device_token(&auth, |_| {}).await;
    spin.stop().await;
    let tokens = r.map_err(identity_error)?;
    let p = oidc.principal(&tokens.claims);
    let creds = Credentials {
        issuer,
        client_id,
        ca_file: a.ca_file.clone(),
        principal: p.id.clone(),
        name: p.name.clone(),
        id_token: tokens.id_token.clone(),
        refresh_token: tokens.refresh_token.clone(),
        expires_at: tokens.claims.exp,
    };
    let path = save(&creds)?;
    if out.json {
        out.json_value(&serde_json::json!({
            "principal": p.id,
            "name": p.name,
            "groups": p.groups,
            "issuer": creds.issuer,
            "expires_at": creds.expires_at,
            "credentials": path,
        }));
    } else {
        out.text(&format!("logged in as {} ({})", p.name, p.id));
        out.note(&format!("login kept in {}", path.display()));
    }
    Ok(0)
}

/// `brig logout`: forget the stored login.
pub fn logout(out: Out) -> Result<i32> {
    let path = credentials_path()?;
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot remove {}: {e}",
                path.display()
            )))
        }
    };
    if out.json {
        out.json_value(&serde_json::json!({ "logged_out": removed }));
    } else if removed {
        out.text("logged out");
    } else {
        out.text("not logged in");
    }
    Ok(0)
}

/// `brig whoami`: who the server says this client is.
pub async fn whoami(c: &Client, out: Out) -> Result<i32> {
    let v = c
        .call_value::<()>(hyper::Method::GET, "/v1/whoami", None)
        .await?;
    if out.json {
        out.json_value(&v);
    } else {
        let list = |k: &str| {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into())
        };
        let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
        out.text(&format!(
            "{} ({}, via {})\nroles  {}\ngroups {}",
            s("id"),
            s("name"),
            s("via"),
            list("roles"),
            list("groups")
        ));
    }
    Ok(0)
}

/// The bearer to send to a TCP endpoint without BRIG_TOKEN: the stored ID
/// token, refreshed first when it has expired. `None` when not logged in.
pub async fn stored_bearer() -> Result<Option<String>> {
    let Some(mut c) = load()? else {
        return Ok(None);
    };
    if c.expires_at - REFRESH_MARGIN_SECS > now_unix() {
        return Ok(Some(c.id_token));
    }
    let expired = || {
        Error::new(
            ErrorKind::Unauthorized,
            format!("your login as {} has expired", c.name),
        )
        .hint("run `brig login` again")
    };
    let Some(refresh) = c.refresh_token.clone() else {
        return Err(expired());
    };
    let oidc = OidcClient::new(oidc_config(&c.issuer, &c.client_id, c.ca_file.clone()))
        .map_err(identity_error)?;
    let t = oidc.refresh(&refresh).await.map_err(|e| {
        let e = identity_error(e);
        Error::new(
            e.kind,
            format!(
                "your login has expired and refreshing it failed: {}",
                e.message
            ),
        )
        .hint("run `brig login` again")
    })?;
    c.id_token = t.id_token.clone();
    c.refresh_token = t.refresh_token.clone().or(c.refresh_token);
    c.expires_at = t.claims.exp;
    save(&c)?;
    Ok(Some(c.id_token))
}
