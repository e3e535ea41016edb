//! The config file (TOML) of `memlens agent --config FILE`: the event engine's settings, and the
//! agent's own under `[agent]` (checked by the agent against its flags).
//!
//! The event engine has windows (how far back the leak detector looks, how far ahead it
//! forecasts), schedules (how often each detector runs), silence (how long a recovered event
//! may be reopened) and filters (which hosts and namespaces raise events). These belong in a
//! file, reviewed and shipped with the deployment, rather than in a dozen flags. Every key is
//! optional and defaults to the value shown below; a mistake is reported with the key's full
//! dotted path (and the file and line when known), e.g.
//! `memlens.toml:5: leak.lookback: invalid duration "-1h": must be a positive duration such as
//! 30m or 6h`, so the agent never starts on a config it half understood.
//!
//! ```toml
//! host = "node-1"
//! cluster = "prod-eu"
//!
//! [leak]
//! enabled = true
//! interval = "1h"
//! lookback = "6h"
//! horizon = "2h"
//! threshold = 0.9
//! min_samples = 10
//! min_growth_bytes_per_hour = 1048576
//! allocation_trace = "10s"
//! allocation_trace_budget_cpus = 0.05
//!
//! [file_cache]
//! enabled = true
//! top_files = 5
//!
//! [restarts]
//! enabled = true
//! interval = "30m"
//! window = "30m"
//! min_restarts = 2
//!
//! [events]
//! silence = "30m"
//! max_events = 10000
//!
//! [filters]
//! hosts = ["node-1", "node-2"]
//! namespaces = [
//!     { cluster_name = "prod-eu", namespace = ["shop", "payments"] },
//!     { namespace = "monitoring" },
//! ]
//!
//! # The agent's flags (`memlens agent --help`), by name in snake case; a flag given on the
//! # command line or its MEMLENS_* variable wins.
//! [agent]
//! sample_shift = 7
//! refresh = "2s"
//! db = "/var/lib/memlens/history.db"
//! metrics_addr = "0.0.0.0:9464"
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The whole config file. An empty file is [`Config::default`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Host name put on events and matched by `filters.hosts`; the agent fills in the
    /// machine's hostname when the key is absent.
    pub host: Option<String>,
    /// Kubernetes cluster name put on events and matched by `filters.namespaces[].cluster_name`.
    pub cluster: Option<String>,
    pub leak: LeakConfig,
    pub file_cache: FileCacheConfig,
    pub restarts: RestartConfig,
    pub events: EventsConfig,
    pub filters: Filters,
    /// The agent's own settings, by the name of its flags (`memlens agent --help`): the agent
    /// checks them against its own definition of those flags; the engine does not read them.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub agent: toml::Table,
}

/// The leak detector: forecasts each cgroup's memory from a trend over `lookback`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeakConfig {
    pub enabled: bool,
    /// How often the detector runs.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How much history the trend is fitted on.
    #[serde(with = "duration")]
    pub lookback: Duration,
    /// How far ahead the forecast must cross `threshold` × limit to raise a leak.
    #[serde(with = "duration")]
    pub horizon: Duration,
    /// Share of the memory limit the forecast must cross, in (0, 1].
    pub threshold: f64,
    /// Fewest samples in `lookback` for a trend to count (at least 3).
    pub min_samples: usize,
    /// Slower growth is never a leak.
    pub min_growth_bytes_per_hour: u64,
    /// A leak in a cgroup of native processes (no allocation profile of their own): how long
    /// the agent traces their allocator for the event's evidence, once per event; "0s": never
    /// (the evidence then says how to run a trace by hand). Every allocator call of the traced
    /// processes traps while traced, so the window is short and its cost bounded below.
    #[serde(with = "duration")]
    pub allocation_trace: Duration,
    /// CPUs such a trace may cost the processes (calls per second x measured cost per call)
    /// before it stops itself (checked every 250 ms).
    pub allocation_trace_budget_cpus: f64,
}

impl Default for LeakConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_hours(1),
            lookback: Duration::from_hours(6),
            horizon: Duration::from_hours(2),
            threshold: 0.9,
            min_samples: 10,
            min_growth_bytes_per_hour: 1 << 20,
            allocation_trace: Duration::from_secs(10),
            allocation_trace_budget_cpus: 0.05,
        }
    }
}

/// The file-cache breakdown attached to memory events.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileCacheConfig {
    pub enabled: bool,
    /// How many of the largest cached files to report, 1..=50.
    pub top_files: usize,
}

impl Default for FileCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            top_files: 5,
        }
    }
}

/// The restart detector: containers that restart repeatedly within a window.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    pub enabled: bool,
    /// How often the detector runs.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// The window restarts are counted in.
    #[serde(with = "duration")]
    pub window: Duration,
    /// Restarts of one container within `window` that make its group abnormal (at least 1).
    pub min_restarts: u32,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_mins(30),
            window: Duration::from_mins(30),
            min_restarts: 2,
        }
    }
}

/// Event bookkeeping.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// An event recovered less than this ago is reopened instead of a new one raised.
    #[serde(with = "duration")]
    pub silence: Duration,
    /// Most events kept (at least 1); the oldest recovered ones are dropped beyond it.
    pub max_events: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            silence: Duration::from_mins(30),
            max_events: 10_000,
        }
    }
}

/// Which subjects raise events. An empty list allows everything.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filters {
    pub hosts: Vec<String>,
    pub namespaces: Vec<NamespaceFilter>,
}

/// Namespaces allowed, optionally only in one cluster.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFilter {
    pub cluster_name: Option<String>,
    /// One name or a list (`namespace = "a"` or `namespace = ["a", "b"]`); never empty.
    #[serde(deserialize_with = "one_or_many")]
    pub namespace: Vec<String>,
}

impl Filters {
    /// Whether events on `host` are allowed: always when `hosts` is empty.
    pub fn host_allowed(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host)
    }

    /// A subject with a known namespace passes when some entry names it (and its
    /// `cluster_name`, when the entry has one, equals `cluster`); a subject without a namespace
    /// (not a pod) passes only when no namespace filter is configured.
    pub fn namespace_allowed(&self, cluster: Option<&str>, namespace: Option<&str>) -> bool {
        if self.namespaces.is_empty() {
            return true;
        }
        let Some(namespace) = namespace else {
            return false;
        };
        self.namespaces.iter().any(|f| {
            f.namespace.iter().any(|n| n == namespace)
                && f.cluster_name.as_deref().is_none_or(|c| Some(c) == cluster)
        })
    }
}

/// Why a config could not be loaded. `key` is the full dotted path, e.g. `leak.lookback`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{}{}{message}", location(path.as_deref(), *line), key_prefix(key))]
    Parse {
        path: Option<PathBuf>,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("{}{key}: {message}", location(path.as_deref(), None))]
    Invalid {
        path: Option<PathBuf>,
        key: String,
        message: String,
    },
}

fn location(path: Option<&Path>, line: Option<usize>) -> String {
    match (path, line) {
        (Some(p), Some(l)) => format!("{}:{l}: ", p.display()),
        (Some(p), None) => format!("{}: ", p.display()),
        (None, Some(l)) => format!("line {l}: "),
        (None, None) => String::new(),
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl Config {
    /// Parses and validates the text of a config file; `path` names it in errors.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::parse_text(text, path)
    }

    fn parse_text(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let parse_error = |key: String, error: &toml::de::Error| {
            let (key, message) = describe(key, error.message());
            let before = error.span().and_then(|span| text.get(..span.start));
            let line = before.map(|t| t.matches('\n').count() + 1);
            ConfigError::Parse {
                path: path.map(Path::to_owned),
                line,
                key,
                message,
            }
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error(String::new(), &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            parse_error(if key == "." { String::new() } else { key }, e.inner())
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.map(Path::to_owned),
                key,
                message,
            })?;
        Ok(config)
    }

    /// The checks serde cannot express, as (key, message).
    fn validate(&self) -> Result<(), (String, String)> {
        fn check(
            ok: bool,
            key: &str,
            message: impl Fn() -> String,
        ) -> Result<(), (String, String)> {
            if ok {
                Ok(())
            } else {
                Err((key.to_owned(), message()))
            }
        }
        let durations = [
            ("leak.interval", self.leak.interval),
            ("leak.lookback", self.leak.lookback),
            ("leak.horizon", self.leak.horizon),
            ("restarts.interval", self.restarts.interval),
            ("restarts.window", self.restarts.window),
            ("events.silence", self.events.silence),
        ];
        for (key, d) in durations {
            check(!d.is_zero(), key, || {
                "must be a positive duration such as 30m or 6h".into()
            })?;
        }
        let t = self.leak.threshold;
        check(t > 0.0 && t <= 1.0, "leak.threshold", || {
            format!("must be in (0, 1], found {t}")
        })?;
        let n = self.leak.min_samples;
        check(n >= 3, "leak.min_samples", || {
            format!("must be at least 3, found {n}")
        })?;
        let d = self.leak.allocation_trace;
        check(
            d <= Duration::from_secs(600),
            "leak.allocation_trace",
            || "must be at most 10m (0s: no trace)".into(),
        )?;
        let b = self.leak.allocation_trace_budget_cpus;
        check(
            b > 0.0 && b.is_finite(),
            "leak.allocation_trace_budget_cpus",
            || format!("must be a positive number of CPUs, found {b}"),
        )?;
        let n = self.file_cache.top_files;
        check((1..=50).contains(&n), "file_cache.top_files", || {
            format!("must be in 1..=50, found {n}")
        })?;
        let n = self.restarts.min_restarts;
        check(n >= 1, "restarts.min_restarts", || {
            format!("must be at least 1, found {n}")
        })?;
        let n = self.events.max_events;
        check(n >= 1, "events.max_events", || {
            format!("must be at least 1, found {n}")
        })?;
        for (i, f) in self.filters.namespaces.iter().enumerate() {
            let ok = !f.namespace.is_empty() && !f.namespace.iter().any(String::is_empty);
            check(ok, &format!("filters.namespaces[{i}].namespace"), || {
                "must name at least one namespace, and no empty name".into()
            })?;
        }
        Ok(())
    }
}

/// Turns serde's messages into "what was expected, what was found" and puts an unknown or
/// missing key into the key path.
fn describe(key: String, message: &str) -> (String, String) {
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field") {
        let expected = ticked.get(1..).unwrap_or_default().join(", ");
        return (key, format!("unknown key (expected one of: {expected})"));
    }
    if let (true, Some(field)) = (message.starts_with("missing field"), ticked.first()) {
        let key = if key.is_empty() {
            (*field).to_owned()
        } else {
            format!("{key}.{field}")
        };
        return (key, "required key is missing".into());
    }
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return (key, message.trim_end().to_owned());
    };
    let found = match found.split([' ', '`', '"']).next().unwrap_or_default() {
        "string" => "a string",
        "integer" => "an integer",
        "floating" => "a number",
        "boolean" => "a boolean",
        "sequence" => "a list",
        "map" => "a table",
        _ => found,
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "an integer",
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    (key, format!("expected {expected}, found {found}"))
}

/// Deserializes one string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a namespace name or a list of names")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut names = Vec::new();
            while let Some(name) = seq.next_element::<String>()? {
                names.push(name);
            }
            Ok(names)
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

/// Durations as humantime strings ("90s", "30m", "6h"), strictly positive.
mod duration {
    use super::{de, fmt, Deserializer, Duration, Visitor};

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct Humantime;
        impl Visitor<'_> for Humantime {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30m or 6h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                match humantime::parse_duration(v) {
                    Ok(d) if !d.is_zero() => Ok(d),
                    Err(e) if !v.trim_start().starts_with('-') => Err(E::custom(format_args!(
                        "invalid duration {v:?}: {e}; use e.g. 90s, 30m or 6h"
                    ))),
                    _ => Err(E::custom(format_args!(
                        "invalid duration {v:?}: must be a positive duration such as 30m or 6h"
                    ))),
                }
            }
        }
        deserializer.deserialize_str(Humantime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `toml` example of the module doc, verbatim.
    fn doc_example() -> String {
        include_str!("config.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn error(text: &str) -> String {
        Config::parse(text, None).expect_err(text).to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let config = Config::parse("", None).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.leak.interval, Duration::from_hours(1));
        assert_eq!(config.leak.min_growth_bytes_per_hour, 1_048_576);
        assert_eq!(config.host, None);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["leak"]["lookback"], "6h");
        assert_eq!(json["events"]["silence"], "30m");
    }

    #[test]
    fn full_example() {
        let text = doc_example();
        assert!(text.contains("[filters]"), "{text}");
        let config = Config::parse(&text, None).unwrap();
        assert_eq!(config.host.as_deref(), Some("node-1"));
        assert_eq!(config.cluster.as_deref(), Some("prod-eu"));
        let defaults = Config::default();
        assert_eq!(config.leak, defaults.leak);
        assert_eq!(
            (config.file_cache, config.restarts),
            (defaults.file_cache, defaults.restarts)
        );
        assert_eq!(config.events, defaults.events);
        assert_eq!(config.filters.hosts, ["node-1", "node-2"]);
        let ns = &config.filters.namespaces;
        assert_eq!(ns[0].cluster_name.as_deref(), Some("prod-eu"));
        assert_eq!(ns[0].namespace, ["shop", "payments"]);
        assert_eq!(
            (ns[1].cluster_name.as_deref(), &ns[1].namespace[..]),
            (None, &["monitoring".to_owned()][..])
        );
    }

    #[test]
    fn errors_name_the_key() {
        let positive = "must be a positive duration such as 30m or 6h";
        let cases = [
            ("[leak]\nlokback = \"6h\"", "line 2: leak.lokback: unknown key (expected one of: enabled, interval, lookback, horizon, threshold, min_samples, min_growth_bytes_per_hour, allocation_trace, allocation_trace_budget_cpus)"),
            ("colour = 1", "line 1: colour: unknown key (expected one of: host, cluster, leak, file_cache, restarts, events, filters, agent)"),
            ("[filters]\nnamespaces = [{ namespace = \"a\", cluster = \"b\" }]", "line 2: filters.namespaces[0].cluster: unknown key (expected one of: cluster_name, namespace)"),
            ("[filters]\nnamespaces = [{ cluster_name = \"x\" }]", "line 2: filters.namespaces[0].namespace: required key is missing"),
            ("[restarts]\nmin_restarts = \"2\"", "line 2: restarts.min_restarts: expected an integer, found a string"),
            ("[leak]\nenabled = 1", "line 2: leak.enabled: expected a boolean, found an integer"),
            ("[leak]\ninterval = 3600", "line 2: leak.interval: expected a duration such as 30m or 6h, found an integer"),
            ("leak = 3", "line 1: leak: expected a table, found an integer"),
            ("[filters]\nhosts = [1]", "line 2: filters.hosts[0]: expected a string, found an integer"),
            ("[filters]\nnamespaces = [{ namespace = 3 }]", "line 2: filters.namespaces[0].namespace: expected a namespace name or a list of names, found an integer"),
            ("[leak]\nlookback = \"-1h\"", &format!("line 2: leak.lookback: invalid duration \"-1h\": {positive}")),
            ("\n[events]\nsilence = \"0s\"", &format!("line 3: events.silence: invalid duration \"0s\": {positive}")),
            ("[leak]\nthreshold = 1.5", "leak.threshold: must be in (0, 1], found 1.5"),
            ("[leak]\nthreshold = 0", "leak.threshold: must be in (0, 1], found 0"),
            ("[leak]\nmin_samples = 2", "leak.min_samples: must be at least 3, found 2"),
            ("[file_cache]\ntop_files = 51", "file_cache.top_files: must be in 1..=50, found 51"),
            ("[restarts]\nmin_restarts = 0", "restarts.min_restarts: must be at least 1, found 0"),
            ("[events]\nmax_events = 0", "events.max_events: must be at least 1, found 0"),
            ("[filters]\nnamespaces = [{ namespace = [] }]", "filters.namespaces[0].namespace: must name at least one namespace, and no empty name"),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), expected, "{text}");
        }
        let e = error("[restarts]\nwindow = \"soon\"");
        assert!(
            e.starts_with("line 2: restarts.window: invalid duration \"soon\": "),
            "{e}"
        );
        assert!(error("[leak\n").starts_with("line 1: "));
        assert!(Config::parse("[leak]\nthreshold = 1", None).is_ok());
    }

    #[test]
    fn filters() {
        let config = Config::parse(
            "[filters]\nhosts = [\"node-1\"]\nnamespaces = [{ cluster_name = \"x\", namespace = [\"a\", \"b\"] }, { namespace = \"c\" }]",
            None,
        )
        .unwrap();
        let f = &config.filters;
        assert!(f.host_allowed("node-1") && !f.host_allowed("node-2"));
        assert!(f.namespace_allowed(Some("x"), Some("a")));
        assert!(f.namespace_allowed(Some("x"), Some("b")));
        assert!(!f.namespace_allowed(Some("y"), Some("a")));
        assert!(!f.namespace_allowed(None, Some("a")));
        assert!(f.namespace_allowed(None, Some("c")) && f.namespace_allowed(Some("y"), Some("c")));
        assert!(!f.namespace_allowed(Some("x"), Some("d")));
        assert!(!f.namespace_allowed(Some("x"), None));
        let all = Filters::default();
        assert!(all.host_allowed("anything") && all.namespace_allowed(None, None));
        assert!(all.namespace_allowed(Some("x"), Some("a")));
    }
}
