//! The one verifying TLS client context of brig's outbound HTTPS (forge
//! APIs, secret sources and minters, the egress proxy's upstreams of
//! intercepted hosts): the system's CA bundle plus the PEM certificates of
//! an optional extra CA file, TLS 1.2 or newer, ALPN `http/1.1` only.
//! Hostname checks come from `SslConnector::configure()` per connection.

use std::path::Path;

use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::X509;

/// The context; `what` names the extra CA file's setting in errors
/// (`ca_file`, `upstream_ca_file`).
pub fn client_connector(extra_ca: Option<&Path>, what: &str) -> Result<SslConnector, String> {
    let ssl = |e: openssl::error::ErrorStack| format!("TLS setup failed: {e}");
    // builder() loads the default verify paths and verifies the peer.
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(ssl)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(ssl)?;
    b.set_alpn_protos(b"\x08http/1.1").map_err(ssl)?;
    if let Some(ca) = extra_ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{what} `{}`: {e}", ca.display()))?;
        let certs = X509::stack_from_pem(&pem)
            .map_err(|e| format!("{what} `{}` is not PEM certificates: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("{what} `{}` holds no certificate", ca.display()));
        }
        for c in certs {
            b.cert_store_mut().add_cert(c).map_err(ssl)?;
        }
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_extra_ca_is_an_error_naming_the_setting() {
        assert!(client_connector(None, "ca_file").is_ok());
        let d = tempfile::tempdir().unwrap();
        let e =
            client_connector(Some(&d.path().join("missing.pem")), "upstream_ca_file").unwrap_err();
        assert!(e.starts_with("upstream_ca_file"), "{e}");
        let junk = d.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = client_connector(Some(&junk), "ca_file").unwrap_err();
        assert!(
            e.contains("holds no certificate") || e.contains("not PEM"),
            "{e}"
        );
    }
}
