//! brig-secrets against local servers speaking each upstream's real HTTP
//! API (one test binary, one module an upstream).

mod common;

mod aws;
mod azure;
mod cache;
mod gcp;
mod github;
mod local;
mod sts;
mod vault;

use std::sync::Arc;

use brig_secrets::{MinterConfig, SecretSource, SecretsConfig, SourceConfig};

/// A source from its `[secrets.sources.test]` TOML.
pub fn source(toml_text: &str) -> Arc<dyn SecretSource> {
    let c: SourceConfig = toml::from_str(toml_text).expect("source config");
    c.build("test").expect("build source")
}

pub fn source_err(toml_text: &str) -> String {
    let c: SourceConfig = toml::from_str(toml_text).expect("source config");
    match c.build("test") {
        Ok(_) => panic!("built"),
        Err(e) => e.to_string(),
    }
}

/// A whole `[secrets]` section.
pub fn secrets(toml_text: &str) -> brig_secrets::config::Secrets {
    let c: SecretsConfig = toml::from_str(toml_text).expect("secrets config");
    c.build().expect("build secrets")
}

pub fn minter(toml_text: &str) -> Arc<dyn brig_secrets::Minter> {
    let c: MinterConfig = toml::from_str(toml_text).expect("minter config");
    c.build("test", Default::default(), &Default::default())
        .expect("build minter")
}

/// TOML's basic string of a path.
pub fn q(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}
