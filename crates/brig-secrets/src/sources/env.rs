//! `kind = "env"`: a variable of brig's own environment (never the
//! sandbox's: the sandbox gets a placeholder).

use serde::Deserialize;

use crate::{BoxFuture, Fetched, SecretError, SecretSource, SecretValue};

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    /// Prepended to every key: with `prefix = "BRIG_SECRET_"`, key `GH`
    /// reads `BRIG_SECRET_GH`, so a key cannot name `PATH` or `HOME`.
    #[serde(default)]
    pub prefix: String,
}

pub struct EnvSource {
    prefix: String,
}

impl EnvSource {
    pub fn new(c: &EnvConfig) -> Self {
        EnvSource {
            prefix: c.prefix.clone(),
        }
    }
}

impl SecretSource for EnvSource {
    fn kind(&self) -> &'static str {
        "env"
    }

    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move {
            let var = format!("{}{key}", self.prefix);
            let not_found = |message: &str| SecretError::NotFound {
                upstream: "env source".into(),
                key: var.clone(),
                message: message.into(),
            };
            if key.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(SecretError::config(format!(
                    "env source: `{var}` is not a variable name"
                )));
            }
            let v = std::env::var_os(&var).ok_or_else(|| {
                not_found("not set in brig's environment; export it before `brig serve`")
            })?;
            if v.is_empty() {
                return Err(not_found("set but empty"));
            }
            Ok(Fetched {
                value: SecretValue::new(v.into_encoded_bytes()),
                ttl: None,
                lease: None,
            })
        })
    }
}
