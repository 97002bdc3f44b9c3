//! The env and file sources.

use std::os::unix::fs::PermissionsExt;

use brig_secrets::SecretError;

use crate::common::{assert_clean, private_file};
use crate::source;

#[tokio::test]
async fn env_source_reads_prefixed_variables_only() {
    std::env::set_var("BRIG_TEST_SECRET_GH", "canary-env-value");
    std::env::set_var("BRIG_TEST_SECRET_EMPTY", "");
    let src = source("kind = \"env\"\nprefix = \"BRIG_TEST_SECRET_\"\n");
    assert_eq!(
        src.fetch("GH").await.unwrap().value.expose_str(),
        Some("canary-env-value")
    );
    let e = src.fetch("MISSING").await.unwrap_err();
    assert!(
        matches!(e, SecretError::NotFound { .. })
            && e.to_string().contains("BRIG_TEST_SECRET_MISSING"),
        "{e}"
    );
    let e = src.fetch("EMPTY").await.unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    assert_clean(&e, &["canary-env-value"]);
}

#[tokio::test]
async fn file_source_demands_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = private_file(dir.path(), "token", b"canary-file-value\n");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    private_file(&dir.path().join("sub"), "k", b"v2");
    let src = source(&format!(
        "kind = \"file\"\ndir = {}\n",
        crate::q(dir.path())
    ));
    assert_eq!(
        src.fetch("token").await.unwrap().value.expose_str(),
        Some("canary-file-value")
    );
    assert_eq!(src.fetch("sub/k").await.unwrap().value.expose(), b"v2");

    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
    let e = src.fetch("token").await.unwrap_err();
    assert!(
        e.to_string().contains("mode 0604") && e.to_string().contains("chmod 600"),
        "{e}"
    );
    assert_clean(&e, &["canary-file-value"]);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::os::unix::fs::symlink(&f, dir.path().join("link")).unwrap();
    let e = src.fetch("link").await.unwrap_err().to_string();
    assert!(e.contains("symlink"), "{e}");
    let e = src.fetch("nope").await.unwrap_err();
    assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
    let e = src.fetch("../etc/passwd").await.unwrap_err().to_string();
    assert!(e.contains("`..`"), "{e}");
    let e = crate::source_err("kind = \"file\"\ndir = \"relative\"\n");
    assert!(e.contains("absolute"), "{e}");
}
