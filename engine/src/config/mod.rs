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
//! # Growth expected of a workload: none of these raise anything until their memory passes
//! # up_to_bytes. Every criterion given must match.
//! [[leak.allow]]
//! cgroup = "/kubepods/**/pod*/*"
//! namespace = "cache"
//! pod = "redis-*"
//! up_to_bytes = 2147483648
//!
//! [file_cache]
//! enabled = true
//! top_files = 5
//! refaults_per_hour = 1.0
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

mod error;
mod sections;
mod serde_forms;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use error::describe;
pub use error::ConfigError;
pub use sections::{
    Allowance, EventsConfig, FileCacheConfig, Filters, LeakConfig, NamespaceFilter, RestartConfig,
};

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
        for (i, rule) in self.leak.allow.iter().enumerate() {
            let key = format!("leak.allow[{i}]");
            check(
                rule.cgroup.is_some() || rule.namespace.is_some() || rule.pod.is_some(),
                &key,
                || "must name a cgroup, a namespace or a pod to match".into(),
            )?;
            check(rule.up_to_bytes > 0, &format!("{key}.up_to_bytes"), || {
                "must be a positive number of bytes".into()
            })?;
            for (field, pattern) in [("cgroup", &rule.cgroup), ("pod", &rule.pod)] {
                if let Some(Err(e)) = pattern.as_deref().map(crate::allowance::glob) {
                    return Err((format!("{key}.{field}"), e));
                }
            }
        }
        let r = self.file_cache.refaults_per_hour;
        check(
            r >= 0.0 && r.is_finite(),
            "file_cache.refaults_per_hour",
            || format!("must be a share of the limit per hour, 0 or more, found {r}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `toml` example of the module doc, verbatim.
    fn doc_example() -> String {
        include_str!("mod.rs")
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
        let allow = &config.leak.allow;
        assert_eq!(allow.len(), 1);
        assert_eq!(
            (allow[0].pod.as_deref(), allow[0].up_to_bytes),
            (Some("redis-*"), 2 << 30)
        );
        assert_eq!(
            LeakConfig {
                allow: Vec::new(),
                ..config.leak
            },
            defaults.leak
        );
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
            ("[leak]\nlokback = \"6h\"", "line 2: leak.lokback: unknown key (expected one of: enabled, interval, lookback, horizon, threshold, min_samples, min_growth_bytes_per_hour, allocation_trace, allocation_trace_budget_cpus, allow)"),
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
            ("[[leak.allow]]\nup_to_bytes = 1", "leak.allow[0]: must name a cgroup, a namespace or a pod to match"),
            ("[[leak.allow]]\npod = \"a\"\nup_to_bytes = 0", "leak.allow[0].up_to_bytes: must be a positive number of bytes"),
            ("[[leak.allow]]\ncgroup = \"/kubepods/[\"\nup_to_bytes = 1", "leak.allow[0].cgroup: invalid pattern \"/kubepods/[\": unclosed character class; missing ']'"),
            ("[[leak.allow]]\npod = \"a\"\nup_to = 1", "line 3: leak.allow[0].up_to: unknown key (expected one of: cgroup, namespace, pod, up_to_bytes)"),
            ("[file_cache]\nrefaults_per_hour = -1", "file_cache.refaults_per_hour: must be a share of the limit per hour, 0 or more, found -1"),
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
