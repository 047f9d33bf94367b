//! Typed configuration. It flows one way: built-in defaults → `qunfa.toml` →
//! `QUNFA_*` environment variables → command-line flags. Nothing else reads
//! the environment.

use std::path::{Path, PathBuf};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

/// A secret that never prints.
#[derive(Clone, Deserialize, Serialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Every setting.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address `serve` listens on.
    pub listen: String,
    /// Where the SQLite database and other local state live.
    pub data_dir: PathBuf,
    /// `postgres://…` selects PostgreSQL; empty means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// The server admin token; generated and printed at first start when unset.
    pub admin_token: Option<Secret>,
    /// A policy file overriding the built-in limits.
    pub policy: Option<PathBuf>,
    /// Log filter (`info`, `qunfa=debug`, …).
    pub log: String,
    /// Database connections per process.
    pub db_connections: usize,
    /// Base URL client commands talk to.
    pub server: String,
    /// Workspace API key for client commands.
    pub api_key: Option<Secret>,
    /// Enables the webhook channel: the secret that signs every request
    /// (`X-Qunfa-Signature`, HMAC-SHA256; see docs/delivery.md).
    pub webhook_secret: Option<Secret>,
    /// Let the server's webhook settings (`webhook_secret`) reach loopback and
    /// private networks (workspaces decide for their own settings).
    pub webhook_allow_private_networks: bool,
    /// The public base URL of this server, for links in messages (one-click
    /// unsubscribe) and provider callbacks (SMS receipts); default
    /// `http://{listen}`.
    pub public_url: Option<String>,
    /// A folder of word files for the content-safety word library (one word a
    /// line, one file per category; see docs/safety.md). Added to the lists
    /// shipped with qunfa.
    pub safety_lexicon_dir: Option<PathBuf>,
    /// A rules file replacing the shipped content-safety rules.
    pub safety_rules: Option<PathBuf>,
    /// A risk model written by `qunfa safety train`, replacing the shipped one.
    pub safety_model: Option<PathBuf>,
    /// Leave the word lists shipped with qunfa out.
    pub safety_no_defaults: bool,
    /// Take client addresses (for abnormal-login detection) from
    /// `X-Forwarded-For`: only behind a proxy that sets it.
    pub trust_forwarded_for: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./qunfa-data"),
            database_url: None,
            admin_token: None,
            policy: None,
            log: "info".into(),
            db_connections: 8,
            server: "http://127.0.0.1:8080".into(),
            api_key: None,
            webhook_secret: None,
            webhook_allow_private_networks: false,
            public_url: None,
            safety_lexicon_dir: None,
            safety_rules: None,
            safety_model: None,
            safety_no_defaults: false,
            trust_forwarded_for: false,
        }
    }
}

const KEYS: [&str; 18] = [
    "listen",
    "data_dir",
    "database_url",
    "admin_token",
    "policy",
    "log",
    "db_connections",
    "server",
    "api_key",
    "webhook_secret",
    "webhook_allow_private_networks",
    "public_url",
    "safety_lexicon_dir",
    "safety_rules",
    "safety_model",
    "safety_no_defaults",
    "trust_forwarded_for",
    "config",
];

/// Flags that override the file and the environment (only the ones given).
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl Config {
    /// Where the content-safety check comes from.
    pub fn safety(&self) -> qunfa_server::safety::SafetyConfig {
        qunfa_server::safety::SafetyConfig {
            no_defaults: self.safety_no_defaults,
            lexicon_dir: self.safety_lexicon_dir.clone(),
            rules_file: self.safety_rules.clone(),
            model_file: self.safety_model.clone(),
        }
    }

    /// Loads the configuration. `file` is `qunfa.toml` unless `--config` or
    /// `QUNFA_CONFIG` names another; a missing default file is fine, a missing
    /// named file is an error.
    ///
    /// # Errors
    /// Unknown keys, wrong types, or a named file that does not exist.
    pub fn load(file: Option<&Path>, flags: FlagOverrides) -> anyhow::Result<Config> {
        let env_file = std::env::var_os("QUNFA_CONFIG").map(PathBuf::from);
        let named = file.map(Path::to_path_buf).or(env_file);
        if let Some(path) = &named {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
        }
        let path = named.unwrap_or_else(|| PathBuf::from("qunfa.toml"));
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(&path))
            .merge(Env::prefixed("QUNFA_").only(&KEYS).ignore(&["config"]))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(config)
    }

    /// The database this configuration names.
    pub fn database(&self) -> qunfa_store::DbLocation {
        match self.database_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => qunfa_store::DbLocation::parse(url),
            None => qunfa_store::DbLocation::Sqlite(self.data_dir.join("qunfa.db")),
        }
    }

    /// The policy in force.
    ///
    /// # Errors
    /// An unreadable or invalid policy file.
    pub fn load_policy(&self) -> anyhow::Result<qunfa_core::Policy> {
        match &self.policy {
            None => Ok(qunfa_core::Policy::builtin()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read policy {}: {e}", path.display()))?;
                Ok(qunfa_core::Policy::from_toml_str(&text)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's own test harness signature
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("qunfa.toml", "listen = \"127.0.0.1:9000\"\nlog = \"debug\"\n")?;
            jail.set_env("QUNFA_LOG", "warn");
            jail.set_env("QUNFA_TEST_POSTGRES_URL", "postgres://ignored");
            let c =
                Config::load(None, FlagOverrides { server: Some("http://x".into()), ..Default::default() }).unwrap();
            assert_eq!(c.listen, "127.0.0.1:9000");
            assert_eq!(c.log, "warn");
            assert_eq!(c.server, "http://x");
            assert_eq!(format!("{:?}", Secret("s3cret".into())), "Secret(***)");
            jail.create_file("bad.toml", "lisen = 1\n")?;
            assert!(Config::load(Some(Path::new("bad.toml")), FlagOverrides::default()).is_err());
            Ok(())
        });
    }
}
