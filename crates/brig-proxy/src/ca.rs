//! brig's per-deployment certificate authority for TLS interception
//! (issue 6). The control plane owns it: the key stays in brig (a file
//! readable by brig alone), sandboxes only ever get the certificate
//! ([`CertAuthority::cert_pem`]) to trust. Leaf certificates are minted on
//! the fly per intercepted host, short-lived, and cached (bounded).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{AlpnError, SslAcceptor, SslMethod, SslVersion};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// What went wrong with the CA (files, keys, minting). Never holds key
/// material.
#[derive(Debug, thiserror::Error)]
#[error("brig CA: {0}")]
pub struct CaError(pub String);

fn ossl(what: &str) -> impl Fn(openssl::error::ErrorStack) -> CaError + '_ {
    move |e| CaError(format!("{what}: {e}"))
}

/// How long a CA made by [`CertAuthority::generate`] is valid.
const CA_VALIDITY_DAYS: u32 = 3650;
/// Leaf lifetime: short, so a leaked leaf is worth little; re-minted when
/// it has less than [`LEAF_RENEW`] left.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const LEAF_RENEW: Duration = Duration::from_secs(3600);
/// Leaves start this far in the past (clients with a slightly slow clock).
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);
/// Hosts whose leaf (and TLS server context) is kept.
pub const LEAF_CACHE: usize = 1024;

struct Leaf {
    acceptor: Arc<SslAcceptor>,
    renew_at: SystemTime,
    used: u64,
}

struct Cache {
    map: HashMap<String, Leaf>,
    tick: u64,
}

/// The CA: its certificate, its key, one in-memory key for every leaf (a
/// leaf's key is as safe as the CA's: both live only in brig), and the
/// leaf cache. Shared by every session of a deployment.
pub struct CertAuthority {
    cert: X509,
    key: PKey<Private>,
    leaf_key: PKey<Private>,
    cert_pem: String,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("subject", &self.cert.subject_name())
            .finish_non_exhaustive()
    }
}

fn ec_key() -> Result<PKey<Private>, CaError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(ossl("EC group"))?;
    let ec = EcKey::generate(&group).map_err(ossl("generating a key"))?;
    PKey::from_ec_key(ec).map_err(ossl("generating a key"))
}

fn serial() -> Result<openssl::asn1::Asn1Integer, CaError> {
    let mut bn = BigNum::new().map_err(ossl("serial"))?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)
        .map_err(ossl("serial"))?;
    bn.to_asn1_integer().map_err(ossl("serial"))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

impl CertAuthority {
    /// A new CA: EC P-256 key, self-signed, `CA:true` (path length 0: it
    /// signs leaves only), key usage `keyCertSign, cRLSign`, 10 years.
    pub fn generate(common_name: &str) -> Result<CertAuthority, CaError> {
        let key = ec_key()?;
        let mut name = X509NameBuilder::new().map_err(ossl("CA name"))?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)
            .map_err(ossl("CA name"))?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "brig")
            .map_err(ossl("CA name"))?;
        let name = name.build();
        let mut b = X509Builder::new().map_err(ossl("CA certificate"))?;
        let e = ossl("CA certificate");
        b.set_version(2).map_err(&e)?;
        let sn = serial()?;
        b.set_serial_number(&sn).map_err(&e)?;
        b.set_subject_name(&name).map_err(&e)?;
        b.set_issuer_name(&name).map_err(&e)?;
        b.set_pubkey(&key).map_err(&e)?;
        let now = unix(SystemTime::now());
        let (from, to) = (
            Asn1Time::from_unix(now - 3600).map_err(&e)?,
            Asn1Time::days_from_now(CA_VALIDITY_DAYS).map_err(&e)?,
        );
        b.set_not_before(&from).map_err(&e)?;
        b.set_not_after(&to).map_err(&e)?;
        b.append_extension(
            BasicConstraints::new()
                .critical()
                .ca()
                .pathlen(0)
                .build()
                .map_err(&e)?,
        )
        .map_err(&e)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .map_err(&e)?,
        )
        .map_err(&e)?;
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .map_err(&e)?;
        b.append_extension(ski).map_err(&e)?;
        b.sign(&key, MessageDigest::sha256()).map_err(&e)?;
        CertAuthority::from_parts(b.build(), key)
    }

    fn from_parts(cert: X509, key: PKey<Private>) -> Result<CertAuthority, CaError> {
        let pubkey = cert.public_key().map_err(ossl("CA certificate"))?;
        if !pubkey.public_eq(&key) {
            return Err(CaError(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        let is_ca = cert
            .to_text()
            .ok()
            .map(|t| String::from_utf8_lossy(&t).contains("CA:TRUE"))
            .unwrap_or(false);
        if !is_ca {
            return Err(CaError(
                "the CA certificate lacks basicConstraints CA:TRUE".into(),
            ));
        }
        let cert_pem = String::from_utf8(cert.to_pem().map_err(ossl("CA certificate"))?)
            .map_err(|_| CaError("CA certificate PEM is not UTF-8".into()))?;
        Ok(CertAuthority {
            cert,
            key,
            leaf_key: ec_key()?,
            cert_pem,
            cache: Mutex::new(Cache {
                map: HashMap::new(),
                tick: 0,
            }),
        })
    }

    /// Load a CA from its certificate and key (PEM). The key file must not
    /// be readable by group or others.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertAuthority, CaError> {
        let meta = fs::metadata(key_path)
            .map_err(|e| CaError(format!("CA key `{}`: {e}", key_path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError(format!(
                "CA key `{}` is readable by group or others (mode {mode:o}); chmod 600 it",
                key_path.display()
            )));
        }
        let key_pem = fs::read(key_path)
            .map_err(|e| CaError(format!("CA key `{}`: {e}", key_path.display())))?;
        // The error never quotes the file (it is key material).
        let key = PKey::private_key_from_pem(&key_pem).map_err(|_| {
            CaError(format!(
                "CA key `{}` is not a PEM private key",
                key_path.display()
            ))
        })?;
        let cert_pem = fs::read(cert_path)
            .map_err(|e| CaError(format!("CA certificate `{}`: {e}", cert_path.display())))?;
        let cert = X509::from_pem(&cert_pem).map_err(|e| {
            CaError(format!(
                "CA certificate `{}` is not a PEM certificate: {e}",
                cert_path.display()
            ))
        })?;
        CertAuthority::from_parts(cert, key)
    }

    /// Write the certificate (0644) and the key (0600, created so: never
    /// briefly readable by others), each atomically (temp file, rename).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
        let key_pem = self
            .key
            .private_key_to_pem_pkcs8()
            .map_err(ossl("CA key"))?;
        write_atomic(key_path, &key_pem, 0o600)?;
        write_atomic(cert_path, self.cert_pem.as_bytes(), 0o644)
    }

    /// `dir/ca.crt` and `dir/ca.key`: loaded if both exist, else a new CA
    /// made and saved there (the directory is created 0700).
    pub fn load_or_generate(dir: &Path, common_name: &str) -> Result<CertAuthority, CaError> {
        let (cert, key) = CertAuthority::paths(dir);
        match (cert.exists(), key.exists()) {
            (true, true) => CertAuthority::load(&cert, &key),
            (false, false) => {
                fs::create_dir_all(dir)
                    .map_err(|e| CaError(format!("`{}`: {e}", dir.display())))?;
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
                let ca = CertAuthority::generate(common_name)?;
                ca.save(&cert, &key)?;
                Ok(ca)
            }
            _ => Err(CaError(format!(
                "`{}` holds only one of ca.crt and ca.key; restore the other or remove both to make a new CA",
                dir.display()
            ))),
        }
    }

    /// The files [`CertAuthority::load_or_generate`] uses.
    pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("ca.crt"), dir.join("ca.key"))
    }

    /// The CA certificate, PEM: what sandboxes trust. Never the key.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert(&self) -> &X509 {
        &self.cert
    }

    /// The TLS server context for `host`: a cached leaf, or a new one.
    pub fn acceptor_for(&self, host: &str) -> Result<Arc<SslAcceptor>, CaError> {
        let now = SystemTime::now();
        {
            let mut c = self.cache.lock().unwrap();
            c.tick += 1;
            let tick = c.tick;
            if let Some(l) = c.map.get_mut(host) {
                if now < l.renew_at {
                    l.used = tick;
                    return Ok(l.acceptor.clone());
                }
            }
        }
        // Minted outside the lock (two racing connections may both mint;
        // the last one is kept).
        let leaf = self.mint(host, now)?;
        let acceptor = Arc::new(server_context(&leaf, &self.leaf_key)?);
        let mut c = self.cache.lock().unwrap();
        if c.map.len() >= LEAF_CACHE && !c.map.contains_key(host) {
            if let Some(oldest) = c
                .map
                .iter()
                .min_by_key(|(_, l)| l.used)
                .map(|(k, _)| k.clone())
            {
                c.map.remove(&oldest);
            }
        }
        let tick = c.tick;
        c.map.insert(
            host.to_string(),
            Leaf {
                acceptor: acceptor.clone(),
                renew_at: now + LEAF_VALIDITY - LEAF_RENEW - LEAF_BACKDATE,
                used: tick,
            },
        );
        Ok(acceptor)
    }

    /// Hosts with a cached leaf.
    pub fn cached_leaves(&self) -> usize {
        self.cache.lock().unwrap().map.len()
    }

    /// A leaf for `host`: SAN dNSName (or iPAddress), serverAuth, random
    /// serial, valid from an hour ago for a day.
    pub fn mint(&self, host: &str, now: SystemTime) -> Result<X509, CaError> {
        let e = ossl("minting a leaf certificate");
        let mut name = X509NameBuilder::new().map_err(&e)?;
        // A CN over 64 characters is invalid; the SAN is what clients check.
        let cn: String = host.chars().take(64).collect();
        name.append_entry_by_nid(Nid::COMMONNAME, &cn).map_err(&e)?;
        let name = name.build();
        let mut b = X509Builder::new().map_err(&e)?;
        b.set_version(2).map_err(&e)?;
        let sn = serial()?;
        b.set_serial_number(&sn).map_err(&e)?;
        b.set_subject_name(&name).map_err(&e)?;
        b.set_issuer_name(self.cert.subject_name()).map_err(&e)?;
        b.set_pubkey(&self.leaf_key).map_err(&e)?;
        let from = unix(now) - LEAF_BACKDATE.as_secs() as i64;
        let to = from + LEAF_VALIDITY.as_secs() as i64;
        let (from, to) = (
            Asn1Time::from_unix(from).map_err(&e)?,
            Asn1Time::from_unix(to).map_err(&e)?,
        );
        b.set_not_before(&from).map_err(&e)?;
        b.set_not_after(&to).map_err(&e)?;
        b.append_extension(BasicConstraints::new().critical().build().map_err(&e)?)
            .map_err(&e)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()
                .map_err(&e)?,
        )
        .map_err(&e)?;
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().map_err(&e)?)
            .map_err(&e)?;
        let mut san = SubjectAlternativeName::new();
        if host.parse::<std::net::IpAddr>().is_ok() {
            san.ip(host);
        } else {
            san.dns(host);
        }
        let san = san
            .build(&b.x509v3_context(Some(&self.cert), None))
            .map_err(&e)?;
        b.append_extension(san).map_err(&e)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(&self.cert), None))
            .map_err(&e)?;
        b.append_extension(aki).map_err(&e)?;
        b.sign(&self.key, MessageDigest::sha256()).map_err(&e)?;
        Ok(b.build())
    }
}

/// The sandbox-facing TLS server: TLS >= 1.2, ALPN http/1.1 only (a
/// client offering only h2 gets no ALPN and speaks HTTP/1.1).
fn server_context(leaf: &X509, key: &PKey<Private>) -> Result<SslAcceptor, CaError> {
    let e = ossl("TLS server context");
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(&e)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(&e)?;
    b.set_certificate(leaf).map_err(&e)?;
    b.set_private_key(key).map_err(&e)?;
    b.check_private_key().map_err(&e)?;
    b.set_alpn_select_callback(|_, client| {
        openssl::ssl::select_next_proto(b"\x08http/1.1", client).ok_or(AlpnError::NOACK)
    });
    Ok(b.build())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let err = |e: std::io::Error| CaError(format!("writing `{}`: {e}", path.display()));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509StoreContext;

    fn verifies(ca: &X509, leaf: &X509) -> bool {
        let mut sb = X509StoreBuilder::new().unwrap();
        sb.add_cert(ca.clone()).unwrap();
        let store = sb.build();
        let chain = openssl::stack::Stack::new().unwrap();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, leaf, &chain, |c| c.verify_cert()).unwrap()
    }

    #[test]
    fn generated_ca_signs_leaves_that_verify() {
        let ca = CertAuthority::generate("brig test CA").unwrap();
        let text = String::from_utf8(ca.cert().to_text().unwrap()).unwrap();
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("Certificate Sign"), "{text}");
        let leaf = ca.mint("api.example.com", SystemTime::now()).unwrap();
        assert!(verifies(ca.cert(), &leaf));
        let lt = String::from_utf8(leaf.to_text().unwrap()).unwrap();
        assert!(lt.contains("DNS:api.example.com"), "{lt}");
        assert!(lt.contains("CA:FALSE"), "{lt}");
        // Another CA's leaf does not verify against this one.
        let other = CertAuthority::generate("other").unwrap();
        assert!(!verifies(
            ca.cert(),
            &other.mint("api.example.com", SystemTime::now()).unwrap()
        ));
        // Serials are random.
        let l2 = ca.mint("api.example.com", SystemTime::now()).unwrap();
        assert_ne!(
            leaf.serial_number().to_bn().unwrap(),
            l2.serial_number().to_bn().unwrap()
        );
        assert!(!ca.cert_pem().contains("PRIVATE"));
    }

    #[test]
    fn save_load_and_key_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ca");
        let ca = CertAuthority::load_or_generate(&d, "brig test CA").unwrap();
        let (cert, key) = CertAuthority::paths(&d);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = CertAuthority::load_or_generate(&d, "ignored").unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let e = CertAuthority::load(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("readable by group or others"), "{e}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        // A key that is not the certificate's is refused.
        let other = CertAuthority::generate("other").unwrap();
        fs::write(&cert, other.cert_pem()).unwrap();
        let e = CertAuthority::load(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        fs::remove_file(&cert).unwrap();
        let e = CertAuthority::load_or_generate(&d, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only one of"), "{e}");
    }

    #[test]
    fn leaf_cache_is_bounded_and_reused() {
        let ca = CertAuthority::generate("brig test CA").unwrap();
        let a = ca.acceptor_for("a.example").unwrap();
        let a2 = ca.acceptor_for("a.example").unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        for i in 0..LEAF_CACHE + 5 {
            ca.acceptor_for(&format!("h{i}.example")).unwrap();
        }
        assert_eq!(ca.cached_leaves(), LEAF_CACHE);
    }
}
