//! The `[secrets]` section of brig.toml (embedded by brig-server):
//!
//! ```toml
//! [secrets.ttl]            # bounds of every minted credential
//! min = "15m"
//! max = "60m"
//! default = "30m"
//!
//! [secrets.cache]
//! max_ttl = "5m"           # no fetched value is kept longer
//!
//! [secrets.sources.NAME]   # a SourceConfig
//! kind = "vault"
//! ...
//!
//! [secrets.minters.NAME]   # a MinterConfig
//! kind = "github_app"
//! ...
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::mint::{self, Minter};
use crate::sources::{self, aws, azure, gcp, vault};
use crate::{SecretCache, SecretError, SecretSource, SecretValue};

/// Durations in brig.toml: `"15m"`, `"1h30m"`, `"90s"`, or a number of
/// seconds.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => brig_core::units::parse_duration(&t).map_err(|_| {
                serde::de::Error::custom(format!(
                    "duration {t:?} is not valid; use e.g. 90s, 15m, 1h"
                ))
            }),
        }
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// The whole `[secrets]` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    #[serde(default)]
    pub ttl: TtlBounds,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub minters: BTreeMap<String, MinterConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The longest any fetched value is kept in memory, whatever its TTL.
    #[serde(default = "default_cache_max", with = "duration")]
    pub max_ttl: Duration,
}

fn default_cache_max() -> Duration {
    Duration::from_secs(300)
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_ttl: default_cache_max(),
        }
    }
}

/// The TTL every minted credential must have: `min <= ttl <= max`. The
/// blueprint's 15 to 60 minutes by default.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TtlBounds {
    #[serde(default = "default_min", with = "duration")]
    pub min: Duration,
    #[serde(default = "default_max", with = "duration")]
    pub max: Duration,
    /// What a mint request without a TTL gets.
    #[serde(default = "default_ttl", with = "duration")]
    pub default: Duration,
}

fn default_min() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_max() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_ttl() -> Duration {
    Duration::from_secs(30 * 60)
}

impl Default for TtlBounds {
    fn default() -> Self {
        TtlBounds {
            min: default_min(),
            max: default_max(),
            default: default_ttl(),
        }
    }
}

impl TtlBounds {
    /// Sanity of the bounds themselves. One minute to 12 hours is what any
    /// upstream here can do (STS: 15 min to 12 h; GitHub: at most 1 h).
    pub fn validate(&self) -> Result<(), SecretError> {
        let f = brig_core::units::format_duration;
        if self.min < Duration::from_secs(60) || self.max > Duration::from_secs(12 * 3600) {
            return Err(SecretError::config(format!(
                "[secrets.ttl] min = {} and max = {} must lie within 1m..12h",
                f(self.min),
                f(self.max)
            )));
        }
        if !(self.min <= self.default && self.default <= self.max) {
            return Err(SecretError::config(format!(
                "[secrets.ttl] needs min <= default <= max, got min = {}, default = {}, max = {}",
                f(self.min),
                f(self.default),
                f(self.max)
            )));
        }
        Ok(())
    }

    /// The TTL to mint: the requested one, or the default; out of bounds is
    /// an error, never silently clamped.
    pub fn resolve(
        &self,
        what: &str,
        requested: Option<Duration>,
    ) -> Result<Duration, SecretError> {
        let ttl = requested.unwrap_or(self.default);
        if ttl < self.min || ttl > self.max {
            let f = brig_core::units::format_duration;
            return Err(SecretError::config(format!(
                "{what}: TTL {} is outside the allowed {}..{} ([secrets.ttl] min/max)",
                f(ttl),
                f(self.min),
                f(self.max)
            )));
        }
        Ok(ttl)
    }
}

/// Where brig reads one of its own credentials (a Vault token, an AppRole
/// secret_id, an AWS secret key...): exactly one of an environment variable
/// of brig's process or a file only brig can read (mode 0600 or stricter).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl CredentialRef {
    pub fn env(name: &str) -> Self {
        CredentialRef {
            env: Some(name.to_string()),
            file: None,
        }
    }

    pub fn validate(&self, what: &str) -> Result<(), SecretError> {
        match (&self.env, &self.file) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(SecretError::config(format!(
                "{what}: set exactly one of `env` (a variable of brig's environment) or `file` (a 0600 file)"
            ))),
        }
    }

    /// Reads the credential now (so a rotated file or variable is picked
    /// up). A missing or empty credential is an error naming where brig
    /// looked.
    pub fn read(&self, what: &str) -> Result<SecretValue, SecretError> {
        self.validate(what)?;
        let v = if let Some(var) = &self.env {
            let v = std::env::var_os(var).ok_or_else(|| {
                SecretError::config(format!(
                    "{what}: environment variable `{var}` is not set in brig's environment"
                ))
            })?;
            SecretValue::new(v.into_encoded_bytes())
        } else {
            let path = self.file.as_ref().expect("validated");
            let mut v = sources::file::read_private(path)
                .map_err(|e| SecretError::config(format!("{what}: {e}")))?;
            sources::file::trim_newline(&mut v);
            SecretValue::new(v)
        };
        if v.is_empty() {
            return Err(SecretError::config(format!(
                "{what}: {} is empty",
                self.describe()
            )));
        }
        Ok(v)
    }

    /// Where it is, for messages (never the value).
    pub fn describe(&self) -> String {
        match (&self.env, &self.file) {
            (Some(v), _) => format!("environment variable `{v}`"),
            (None, Some(f)) => format!("file `{}`", f.display()),
            _ => "nothing".into(),
        }
    }
}

/// One `[secrets.sources.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    Env(sources::env::EnvConfig),
    File(sources::file::FileConfig),
    Vault(vault::VaultConfig),
    AwsSsm(aws::AwsConfig),
    AwsSecretsManager(aws::AwsConfig),
    GcpSecretManager(gcp::GcpConfig),
    AzureKeyVault(azure::AzureConfig),
}

impl SourceConfig {
    /// Builds the source. Nothing is fetched yet; configuration errors
    /// (bad URLs, unreadable CA files, conflicting settings) surface here.
    pub fn build(&self, name: &str) -> Result<Arc<dyn SecretSource>, SecretError> {
        Ok(match self {
            SourceConfig::Env(c) => Arc::new(sources::env::EnvSource::new(c)),
            SourceConfig::File(c) => Arc::new(sources::file::FileSource::new(name, c)?),
            SourceConfig::Vault(c) => Arc::new(vault::VaultSource::new(name, c)?),
            SourceConfig::AwsSsm(c) => Arc::new(aws::AwsSource::new(name, aws::Service::Ssm, c)?),
            SourceConfig::AwsSecretsManager(c) => {
                Arc::new(aws::AwsSource::new(name, aws::Service::SecretsManager, c)?)
            }
            SourceConfig::GcpSecretManager(c) => Arc::new(gcp::GcpSource::new(name, c)?),
            SourceConfig::AzureKeyVault(c) => Arc::new(azure::AzureSource::new(name, c)?),
        })
    }
}

/// One `[secrets.minters.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MinterConfig {
    GithubApp(mint::github::GithubAppConfig),
    AwsSts(mint::sts::StsConfig),
    /// Vault dynamic secrets through a `[secrets.sources.NAME]` of kind
    /// `vault` with `engine = "dynamic"`.
    Vault(mint::vault::VaultMinterConfig),
}

impl MinterConfig {
    pub fn build(
        &self,
        name: &str,
        ttl: TtlBounds,
        sources: &BTreeMap<String, Arc<dyn SecretSource>>,
    ) -> Result<Arc<dyn Minter>, SecretError> {
        Ok(match self {
            MinterConfig::GithubApp(c) => {
                Arc::new(mint::github::GithubAppMinter::new(name, c, ttl)?)
            }
            MinterConfig::AwsSts(c) => Arc::new(mint::sts::StsMinter::new(name, c, ttl)?),
            MinterConfig::Vault(c) => {
                Arc::new(mint::vault::VaultMinter::new(name, c, ttl, sources)?)
            }
        })
    }
}

/// Everything `[secrets]` built: the sources (also behind the cache) and
/// the minters, by their names in brig.toml.
pub struct Secrets {
    pub sources: BTreeMap<String, Arc<dyn SecretSource>>,
    pub minters: BTreeMap<String, Arc<dyn Minter>>,
    pub cache: SecretCache,
}

fn check_name(section: &str, name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SecretError::config(format!(
            "[secrets.{section}.{name}]: a name is 1-64 letters, digits, `-` or `_`"
        )))
    }
}

impl SecretsConfig {
    pub fn build(&self) -> Result<Secrets, SecretError> {
        self.ttl.validate()?;
        let mut sources = BTreeMap::new();
        for (name, c) in &self.sources {
            check_name("sources", name)?;
            sources.insert(name.clone(), c.build(name)?);
        }
        let mut minters = BTreeMap::new();
        for (name, c) in &self.minters {
            check_name("minters", name)?;
            minters.insert(name.clone(), c.build(name, self.ttl, &sources)?);
        }
        let cache = SecretCache::new(sources.clone(), self.cache.max_ttl);
        Ok(Secrets {
            sources,
            minters,
            cache,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        let b = TtlBounds::default();
        b.validate().unwrap();
        assert_eq!(b.resolve("m", None).unwrap(), Duration::from_secs(1800));
        assert_eq!(
            b.resolve("m", Some(Duration::from_secs(900))).unwrap(),
            Duration::from_secs(900)
        );
        let e = b
            .resolve("minter `gh`", Some(Duration::from_secs(600)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("minter `gh`: TTL 10m is outside the allowed 15m..1h"),
            "{e}"
        );
        assert!(b.resolve("m", Some(Duration::from_secs(3601))).is_err());
        let bad = TtlBounds {
            default: Duration::from_secs(7200),
            ..b
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("min <= default <= max"));
    }

    #[test]
    fn parses_a_full_section() {
        let c: SecretsConfig = toml::from_str(
            r#"
            [ttl]
            min = "15m"
            max = "1h"
            default = 1200
            [cache]
            max_ttl = "2m"
            [sources.local]
            kind = "env"
            prefix = "BRIG_SECRET_"
            [sources.vault]
            kind = "vault"
            address = "https://vault.example:8200"
            auth = { method = "token", token = { env = "VAULT_TOKEN" } }
            "#,
        )
        .unwrap();
        assert_eq!(c.ttl.default, Duration::from_secs(1200));
        assert_eq!(c.cache.max_ttl, Duration::from_secs(120));
        assert!(matches!(c.sources["vault"], SourceConfig::Vault(_)));
        let e = toml::from_str::<SecretsConfig>("[sources.x]\nkind = \"env\"\nprefx = \"A\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefx"), "{e}");
        let e = toml::from_str::<SecretsConfig>("[sources.x]\nkind = \"keychain\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keychain"), "{e}");
    }

    #[test]
    fn credential_refs() {
        let both = CredentialRef {
            env: Some("A".into()),
            file: Some("/x".into()),
        };
        assert!(both
            .read("vault token")
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        let e = CredentialRef::env("BRIG_TEST_SURELY_UNSET_VAR")
            .read("vault token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`BRIG_TEST_SURELY_UNSET_VAR` is not set"), "{e}");
    }
}
