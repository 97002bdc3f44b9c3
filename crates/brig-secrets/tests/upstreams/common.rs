//! Fake upstreams: a tokio + hyper server on loopback (HTTP, or HTTPS
//! with a throwaway CA) handing every request to a handler, and helpers
//! for keys, files and assertions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
    pub fn form_get(&self, k: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v)
    }
}

pub type Resp = Response<Full<Bytes>>;
pub type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

pub fn json(status: u16, body: serde_json::Value) -> Resp {
    raw(status, "application/json", body.to_string())
}

pub fn raw(status: u16, content_type: &str, body: String) -> Resp {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

pub struct Server {
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`
    pub url: String,
    pub seen: Arc<Mutex<Vec<Req>>>,
    /// The CA to trust for an HTTPS server.
    pub ca_file: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub async fn http(handler: Handler) -> Server {
        Self::start(handler, None, Duration::ZERO).await
    }

    /// Answers after `delay` (to let concurrent requests pile up).
    pub async fn http_slow(handler: Handler, delay: Duration) -> Server {
        Self::start(handler, None, delay).await
    }

    pub async fn https(handler: Handler) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (acceptor, ca) = tls_acceptor(dir.path());
        let mut s = Self::start(handler, Some(acceptor), Duration::ZERO).await;
        s.ca_file = Some(ca);
        s._dir = Some(dir);
        s
    }

    async fn start(handler: Handler, tls: Option<SslAcceptor>, delay: Duration) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
        let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
        let tls = tls.map(Arc::new);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (handler, seen, tls) = (handler.clone(), seen2.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (handler, seen) = (handler.clone(), seen.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let r = Req {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(r.clone());
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(handler(&r))
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(acc) => {
                            let ssl = Ssl::new(acc.context()).unwrap();
                            let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                            if Pin::new(&mut s).accept().await.is_ok() {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Server {
            url,
            seen,
            ca_file: None,
            _dir: None,
        }
    }

    pub fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests went to a path starting with `prefix`.
    pub fn hits(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    n.build()
}

fn cert(
    serial: u32,
    subject: &str,
    issuer: &openssl::x509::X509NameRef,
    key: &PKey<Private>,
    signer: &PKey<Private>,
    ca: bool,
) -> X509 {
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name(subject)).unwrap();
    b.set_issuer_name(issuer).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    } else {
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

/// A throwaway CA (its PEM written to `dir/ca.pem`) and an acceptor whose
/// leaf it signed for 127.0.0.1.
fn tls_acceptor(dir: &Path) -> (SslAcceptor, PathBuf) {
    let ca_key = rsa_key();
    let ca = cert(
        1,
        "brig-secrets test CA",
        &name("brig-secrets test CA"),
        &ca_key,
        &ca_key,
        true,
    );
    let leaf_key = rsa_key();
    let leaf = cert(2, "127.0.0.1", ca.subject_name(), &leaf_key, &ca_key, false);
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.to_pem().unwrap()).unwrap();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_private_key(&leaf_key).unwrap();
    b.set_certificate(&leaf).unwrap();
    b.add_extra_chain_cert(ca).unwrap();
    (b.build(), ca_file)
}

pub fn rsa_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

/// Writes a file with mode 0600 (what brig demands of secret files).
pub fn private_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Verifies an RS256 JWT with `key`'s public half; returns its claims.
pub fn verify_jwt(jwt: &str, key: &PKey<Private>) -> Option<serde_json::Value> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let (input, sig) = jwt.rsplit_once('.')?;
    let (header, claims) = input.split_once('.')?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header["alg"] != "RS256" {
        return None;
    }
    let public = PKey::public_key_from_pem(&key.public_key_to_pem().unwrap()).unwrap();
    let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &public).unwrap();
    v.update(input.as_bytes()).unwrap();
    if !v
        .verify(&URL_SAFE_NO_PAD.decode(sig).ok()?)
        .unwrap_or(false)
    {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A secret must not appear in an error's Display or Debug form.
pub fn assert_clean(e: &brig_secrets::SecretError, secrets: &[&str]) {
    let shown = format!("{e} {e:?}");
    for s in secrets {
        assert!(!shown.contains(s), "`{s}` leaked into an error: {shown}");
    }
}

/// What AWS does with a request: recompute its SigV4 signature with the
/// secret key the server knows for the access key id, from the headers
/// the request says it signed. `Err` carries AWS's error `__type`.
pub fn verify_sigv4(r: &Req, akid: &str, secret: &str) -> Result<(String, String), &'static str> {
    let auth = r
        .header("authorization")
        .ok_or("MissingAuthenticationToken")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("IncompleteSignature")?;
    let mut cred = "";
    let mut signed = "";
    let mut sig = "";
    for part in rest.split(", ") {
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = v;
        }
    }
    let c: Vec<&str> = cred.split('/').collect();
    if c.len() != 5 || c[4] != "aws4_request" {
        return Err("IncompleteSignature");
    }
    if c[0] != akid {
        return Err("UnrecognizedClientException");
    }
    let date = r.header("x-amz-date").ok_or("IncompleteSignature")?;
    if !date.starts_with(c[1]) {
        return Err("InvalidSignatureException");
    }
    // Every x-amz-* header and host and content-type must be signed.
    for must in ["host", "x-amz-date", "content-type"] {
        if !signed.split(';').any(|h| h == must) {
            return Err("IncompleteSignature");
        }
    }
    if r.header("x-amz-security-token").is_some() && !signed.contains("x-amz-security-token") {
        return Err("IncompleteSignature");
    }
    let headers: Vec<(String, String)> = signed
        .split(';')
        .map(|h| (h.to_string(), r.header(h).unwrap_or_default().to_string()))
        .collect();
    let hdrs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
    let creds = brig_sigv4::Credentials {
        access_key_id: akid.into(),
        secret_access_key: secret.into(),
        session_token: None,
    };
    let want = brig_sigv4::sign(
        &r.method, path, query, &hdrs, &r.body, &creds, c[2], c[3], date,
    );
    if want.signature != sig {
        return Err("InvalidSignatureException");
    }
    Ok((c[2].to_string(), c[3].to_string()))
}
