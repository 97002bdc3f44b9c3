//! A throwaway CA, a leaf certificate for 127.0.0.1/localhost, and an HTTPS
//! server (tokio + OpenSSL + hyper) that hands every request to a handler.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

pub struct Req {
    pub method: String,
    /// Path and query, as sent (percent-encoding kept).
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
}

pub type Resp = Response<Full<Bytes>>;

/// What a fake forge saw: method, path, the headers asked for, JSON body.
pub type Seen = (String, String, Vec<(String, String)>, serde_json::Value);

pub fn record(r: &Req, keep: &[&str]) -> Seen {
    let hdrs = keep
        .iter()
        .filter_map(|k| r.header(k).map(|v| (k.to_string(), v.to_string())))
        .collect();
    (r.method.clone(), r.path.clone(), hdrs, r.json())
}
pub type Handler = Arc<dyn Fn(Req) -> Pin<Box<dyn Future<Output = Resp> + Send>> + Send + Sync>;

pub fn json_resp(status: u16, headers: &[(&str, String)], body: serde_json::Value) -> Resp {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json; charset=utf-8");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    n.build()
}

fn builder(
    serial: u32,
    subject: &str,
    issuer: &openssl::x509::X509NameRef,
    key: &PKey<Private>,
) -> X509Builder {
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
    b
}

/// A CA and a leaf it signed, valid for 127.0.0.1 and localhost.
pub struct TestPki {
    pub ca_pem_file: PathBuf,
    leaf: X509,
    leaf_key: PKey<Private>,
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        Self::for_names(dir, &["127.0.0.1"], &["localhost"])
    }

    /// A leaf valid only for these names (to test hostname verification).
    pub fn for_names(dir: &Path, ips: &[&str], dns: &[&str]) -> TestPki {
        let ca_key = key();
        let ca_name = name("brig-forge test CA");
        let mut b = builder(1, "brig-forge test CA", &ca_name, &ca_key);
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let ca = b.build();

        let leaf_key = key();
        let mut b = builder(2, "127.0.0.1", ca.subject_name(), &leaf_key);
        let mut san = SubjectAlternativeName::new();
        for ip in ips {
            san.ip(ip);
        }
        for d in dns {
            san.dns(d);
        }
        let san = san.build(&b.x509v3_context(Some(&ca), None)).unwrap();
        b.append_extension(san).unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
        b.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let leaf = b.build();

        let ca_pem_file = dir.join("test-ca.pem");
        std::fs::write(&ca_pem_file, ca.to_pem().unwrap()).unwrap();
        TestPki {
            ca_pem_file,
            leaf,
            leaf_key,
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// TLS handshakes that failed (an untrusting client hangs up).
    pub failed_handshakes: Arc<AtomicUsize>,
    /// Requests that reached the handler.
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }
    pub fn handshake_failures(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

pub async fn serve(pki: &TestPki, handler: Handler) -> Server {
    let mut a = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    a.set_private_key(&pki.leaf_key).unwrap();
    a.set_certificate(&pki.leaf).unwrap();
    let acceptor = Arc::new(a.build());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failed = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (f2, r2) = (failed.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler, failed, requests) =
                (acceptor.clone(), handler.clone(), f2.clone(), r2.clone());
            tokio::spawn(async move {
                let ssl = Ssl::new(acceptor.context()).unwrap();
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if Pin::new(&mut tls).accept().await.is_err() {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    let requests = requests.clone();
                    async move {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let path = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default();
                        let r = Req {
                            method: parts.method.to_string(),
                            path,
                            headers: parts.headers,
                            body,
                        };
                        Ok::<_, Infallible>(handler(r).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Server {
        addr,
        failed_handshakes: failed,
        requests,
        task,
    }
}

/// A fake forge: its state, and a handler over it served over HTTPS with a
/// CA of its own. The handler is told the server's base URL.
pub struct Fake<S> {
    _dir: tempfile::TempDir,
    pub pki: TestPki,
    pub server: Server,
    pub state: Arc<Mutex<S>>,
}

pub async fn fake<S: Default + Send + 'static>(handle: fn(&mut S, &str, Req) -> Resp) -> Fake<S> {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let state = Arc::new(Mutex::new(S::default()));
    let base = Arc::new(Mutex::new(String::new()));
    let (st, b2) = (state.clone(), base.clone());
    let handler: Handler = Arc::new(move |r| {
        let base = b2.lock().unwrap().clone();
        let resp = handle(&mut st.lock().unwrap(), &base, r);
        Box::pin(async move { resp })
    });
    let server = serve(&pki, handler).await;
    *base.lock().unwrap() = server.base();
    Fake {
        _dir: dir,
        pki,
        server,
        state,
    }
}

impl<S> Fake<S> {
    /// Client options that trust this server's CA.
    pub fn opts(&self) -> brig_forge::HttpOptions {
        brig_forge::HttpOptions {
            ca_file: Some(self.pki.ca_pem_file.clone()),
            timeout: Duration::from_secs(10),
            ..brig_forge::HttpOptions::default()
        }
    }
}
