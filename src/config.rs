//! Configuration: `config/default.toml` (embedded), then an optional file, then environment
//! variables `KMFLOW__SECTION__KEY`, later layers winning. Validated once after loading.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use kmflow_dataflows::contrib::StatsLevel;

/// The defaults, also the reference documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    pub generator: GeneratorConfig,
    pub pipeline: PipelineConfig,
    pub state: StateConfig,
    pub api: ApiConfig,
    pub stats: StatsConfig,
    pub stream: StreamConfig,
    pub cluster: ClusterConfig,
}

/// `kmflow run --process N --peers a,b --apis u,v`: the `[cluster]` keys from the command line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apis: Option<Vec<String>>,
}

/// Several processes as one dataflow (see `cluster`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every process's timely address, in process order; empty: one process.
    pub addresses: Vec<String>,
    /// This process's index in `addresses`.
    pub process: usize,
    /// Every process's API base URL, in process order.
    pub apis: Vec<String>,
    /// A forwarded read's time limit.
    pub forward_timeout_ms: u64,
}

/// The live feed, `GET /v1/stream`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StreamConfig {
    /// Open subscribers at most; more are answered 503.
    pub max_subscribers: usize,
    /// Checkpoints kept for resuming with `Last-Event-ID`, at most.
    pub retain_checkpoints: usize,
    /// ... and at most this much memory (MiB, estimated).
    pub retain_mb: usize,
    /// Entity ids one subscription may filter on, at most.
    pub max_filter_ids: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StatsConfig {
    pub level: StatsLevel,
    /// Directory with `zkillboard-items.json` and `invGroups.csv`; empty: none.
    pub static_dir: PathBuf,
    /// `system`, or a fixed RFC 3339 time the stream clock is capped by.
    pub wall_clock: String,
}

impl StatsConfig {
    /// The wall clock: the system's, or the pinned time.
    pub fn wall_clock(&self) -> Result<WallClock, ConfigError> {
        match self.wall_clock.trim() {
            "system" => Ok(WallClock::System),
            t => kmflow_dataflows::time::parse_rfc3339(t)
                .map(WallClock::Pinned)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "stats.wall-clock must be \"system\" or an RFC 3339 UTC time, got {t:?}"
                    ))
                }),
        }
    }
}

/// What the stream clock is capped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WallClock {
    System,
    /// Unix seconds.
    Pinned(i64),
}

impl WallClock {
    /// Now, in Unix seconds.
    pub fn now(self) -> i64 {
        match self {
            WallClock::System => (crate::state::now_ms() / 1000) as i64,
            WallClock::Pinned(t) => t,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Generator,
    Kafka,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
}

/// What to do with a partition whose stored offset is past its end.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OffsetResetPolicy {
    Stop,
    Reprocess,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub live_topic: String,
    pub history_topics: Vec<String>,
    pub group_id: String,
    pub on_offset_reset: OffsetResetPolicy,
    #[serde(default)]
    pub options: KafkaOptions,
}

/// Extra librdkafka properties (`[kafka.options]`). They may hold credentials, so `Debug` and
/// `Serialize` mask the value of every key that looks secret ([`KafkaOptions::is_secret`]);
/// only the Kafka client reads the real values ([`KafkaOptions::iter`]).
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct KafkaOptions(pub BTreeMap<String, String>);

impl KafkaOptions {
    /// What replaces a secret value wherever options are printed.
    pub const MASK: &'static str = "*****";

    /// `sasl.*`, and any key containing `password`, `secret`, `token` or `key` (e.g.
    /// `ssl.key.password`, `sasl.oauthbearer.client.secret`).
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        k.starts_with("sasl.")
            || ["password", "secret", "token", "key"]
                .iter()
                .any(|s| k.contains(s))
    }

    /// The real properties, for the Kafka client only.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    fn masked(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if Self::is_secret(k) { Self::MASK } else { v };
                (k.as_str(), v)
            })
            .collect()
    }
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.masked()).finish()
    }
}

impl Serialize for KafkaOptions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.masked().serialize(s)
    }
}

impl ApiConfig {
    /// The read pool's size: `read-threads`, or with 0 the available cores minus one (at
    /// least one), so reads can never take every core from the threads answering probes.
    pub fn read_threads(&self) -> usize {
        match self.read_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n => n,
        }
    }
}

impl KafkaConfig {
    /// The live topic first, then the history topics: a topic's index here is its id in
    /// [`kmflow_dataflows::SourcePos::topic`].
    pub fn topics(&self) -> Vec<String> {
        let mut t = vec![self.live_topic.clone()];
        t.extend(self.history_topics.iter().cloned());
        t
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GeneratorConfig {
    pub seed: u64,
    pub count: u64,
    pub rate_per_sec: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PipelineConfig {
    pub workers: usize,
    pub epoch_max_records: usize,
    pub epoch_max_ms: u64,
    pub max_inflight_epochs: u64,
    /// On SIGTERM/SIGINT, how long to finish the current epoch before exiting at the last
    /// checkpoint anyway.
    pub shutdown_grace_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StateConfig {
    pub dir: PathBuf,
    pub block_cache_mb: usize,
    /// All-time rows the statistics shards keep between checkpoints (over all workers).
    pub cache_rows: usize,
    /// Dead letters kept at most; the oldest are dropped past it.
    pub dead_letters_max: u64,
    /// Dead letters kept at most, in MiB of stored records; the oldest are dropped past it.
    pub dead_letters_max_mb: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Open connections at most; more are closed on accept (see `serve`).
    pub max_connections: usize,
    /// Requests being handled at most; more are answered 503 at once.
    pub max_in_flight: usize,
    /// A request's headers must arrive within this time.
    pub header_timeout_ms: u64,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// A request not answered within this time gets a 503.
    pub request_timeout_ms: u64,
    /// Threads that run RocksDB reads for the API (off the async runtime); 0: the available
    /// cores minus one, at least one ([`ApiConfig::read_threads`]).
    pub read_threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The defaults alone (`config/default.toml`), without files or environment.
    pub fn defaults() -> Config {
        Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("config/default.toml is valid")
    }

    /// Loads defaults, then `file` if given, then `KMFLOW__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(file, &ClusterFlags::default())
    }

    /// [`Config::load`], then the command line's cluster flags over everything.
    pub fn load_with(file: Option<&Path>, flags: &ClusterFlags) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} not found",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(
            Env::prefixed("KMFLOW__")
                .split("__")
                .map(|k| k.as_str().to_ascii_lowercase().replace('_', "-").into()),
        );
        fig = fig.merge(figment::providers::Serialized::default("cluster", flags));
        let config: Config = fig.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if c.addresses.is_empty() {
            if c.process != 0 || !c.apis.is_empty() {
                return bad("cluster.process and cluster.apis need cluster.addresses".into());
            }
            return Ok(());
        }
        if c.addresses.len() > 64 {
            return bad("cluster.addresses: at most 64 processes".into());
        }
        if c.process >= c.addresses.len() {
            return bad(format!(
                "cluster.process is {} but cluster.addresses lists {} processes (0..{})",
                c.process,
                c.addresses.len(),
                c.addresses.len()
            ));
        }
        if c.apis.len() != c.addresses.len() {
            return bad(format!(
                "cluster.apis must list one API URL per process ({} addresses, {} apis)",
                c.addresses.len(),
                c.apis.len()
            ));
        }
        if let Some(a) = c.addresses.iter().find(|a| a.rsplit_once(':').is_none()) {
            return bad(format!("cluster.addresses: {a:?} is not host:port"));
        }
        if let Some(a) = c.apis.iter().find(|a| !a.starts_with("http://")) {
            return bad(format!("cluster.apis: {a:?} must be an http:// URL"));
        }
        if c.forward_timeout_ms == 0 {
            return bad("cluster.forward-timeout-ms must be positive".into());
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.stream.retain_checkpoints == 0 || self.stream.retain_mb == 0 {
            return bad("stream.retain-checkpoints and stream.retain-mb must be positive");
        }
        if self.pipeline.workers == 0 || self.pipeline.workers > 256 {
            return bad("pipeline.workers must be between 1 and 256");
        }
        if self.pipeline.epoch_max_records == 0 {
            return bad("pipeline.epoch-max-records must be positive");
        }
        if self.pipeline.epoch_max_ms == 0 {
            return bad("pipeline.epoch-max-ms must be positive");
        }
        if self.pipeline.max_inflight_epochs == 0 {
            return bad("pipeline.max-inflight-epochs must be positive");
        }
        self.stats.wall_clock()?;
        self.validate_cluster()?;
        let a = &self.api;
        if a.max_connections == 0 || a.max_in_flight == 0 {
            return bad("api.max-connections and api.max-in-flight must be positive");
        }
        if a.header_timeout_ms == 0 || a.idle_timeout_ms == 0 || a.request_timeout_ms == 0 {
            return bad("api timeouts must be positive");
        }
        if a.request_timeout_ms >= a.idle_timeout_ms {
            return bad("api.request-timeout-ms must be below api.idle-timeout-ms (a slow request must get its 503 before its connection is closed)");
        }
        if self.source.kind == SourceKind::Kafka {
            if self.kafka.brokers.trim().is_empty() {
                return bad("kafka.brokers must not be empty");
            }
            let topics = self.kafka.topics();
            if topics.iter().any(|t| t.trim().is_empty()) {
                return bad("kafka topics must have names");
            }
            let mut uniq = topics.clone();
            uniq.sort();
            uniq.dedup();
            if uniq.len() != topics.len() {
                return bad("kafka.live-topic and kafka.history-topics must be distinct");
            }
            if topics.len() > u16::MAX as usize {
                return bad("too many kafka topics");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c: Config = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        c.validate().unwrap();
        assert_eq!(c.source.kind, SourceKind::Generator);
        assert_eq!(c.kafka.topics(), vec!["killmails".to_string()]);
    }

    #[test]
    fn example_file_parses() {
        let c: Config = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(include_str!("../config/kafka.example.toml")))
            .extract()
            .unwrap();
        c.validate().unwrap();
        assert_eq!(c.kafka.topics().len(), 3);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn env_overrides_and_validation() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KMFLOW__PIPELINE__WORKERS", "3");
            jail.set_env("KMFLOW__KAFKA__LIVE_TOPIC", "live");
            jail.set_env("KMFLOW__KAFKA__HISTORY_TOPICS", "[\"h1\", \"h2\"]");
            jail.set_env("KMFLOW__KAFKA__ON_OFFSET_RESET", "reprocess");
            let c = Config::load(None).unwrap();
            assert_eq!(c.pipeline.workers, 3);
            assert_eq!(c.kafka.live_topic, "live");
            assert_eq!(c.kafka.topics(), vec!["live", "h1", "h2"]);
            assert_eq!(c.kafka.on_offset_reset, OffsetResetPolicy::Reprocess);
            jail.set_env("KMFLOW__PIPELINE__WORKERS", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("pipeline.workers"), "{err}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn cluster_from_the_environment_and_the_command_line() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KMFLOW__CLUSTER__ADDRESSES", "[\"a:7000\", \"b:7000\"]");
            jail.set_env(
                "KMFLOW__CLUSTER__APIS",
                "[\"http://a:8080\", \"http://b:8080\"]",
            );
            let c = Config::load(None).unwrap();
            assert_eq!(c.cluster.addresses, vec!["a:7000", "b:7000"]);
            assert_eq!(c.cluster.process, 0);
            // The command line wins over the environment.
            let flags = ClusterFlags {
                process: Some(1),
                ..Default::default()
            };
            assert_eq!(Config::load_with(None, &flags).unwrap().cluster.process, 1);
            let bad =
                |flags: ClusterFlags| Config::load_with(None, &flags).unwrap_err().to_string();
            assert!(bad(ClusterFlags {
                process: Some(2),
                ..Default::default()
            })
            .contains("cluster.process is 2"));
            assert!(bad(ClusterFlags {
                apis: Some(vec!["http://a:8080".into()]),
                ..Default::default()
            })
            .contains("one API URL per process"));
            assert!(bad(ClusterFlags {
                addresses: Some(vec!["a".into(), "b:1".into()]),
                ..Default::default()
            })
            .contains("not host:port"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let r: Result<Config, _> = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[pipeline]\nwrokers = 3\n"))
            .extract();
        assert!(r.is_err());
    }

    #[test]
    fn secrets_in_kafka_options_are_masked_wherever_printed() {
        let c: Config = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(
                "[kafka.options]\n\"sasl.password\" = \"hunter2\"\n\"ssl.key.password\" = \"pw2\"\n\"sasl.username\" = \"me\"\n\"client.id\" = \"kmflow-1\"\n",
            ))
            .extract()
            .unwrap();
        let printed = [
            format!("{c:?}"),
            format!("{:#?}", c.kafka),
            serde_json::to_string(&c).unwrap(),
        ];
        for p in &printed {
            for secret in ["hunter2", "pw2", "\"me\""] {
                assert!(!p.contains(secret), "{secret} leaked: {p}");
            }
            assert!(
                p.contains("kmflow-1"),
                "non-secret options stay visible: {p}"
            );
            assert!(p.contains(KafkaOptions::MASK));
        }
        // The Kafka client still gets the real values.
        let real: BTreeMap<_, _> = c.kafka.options.iter().collect();
        assert_eq!(real[&"sasl.password".to_string()], "hunter2");
    }
}
