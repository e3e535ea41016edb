//! Growth a workload is allowed (`leak.allow`): a cache that fills to its configured size, a
//! heap sized at start-up. Matched by cgroup path, namespace and pod name; compiled once per
//! run of the detector.

use globset::{GlobBuilder, GlobMatcher};
use memlens_types::{pod::PodMeta, Bytes};

use crate::config::Allowance;

/// Where users see cgroups, in front of the hierarchy path a pattern is matched against.
const SHELL_PREFIXES: [&str; 3] = [
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
];

/// Compiles one of the config's globs: `*` stays within a path level, `**` crosses levels.
pub(crate) fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid pattern {pattern:?}: {}", e.kind()))
}

/// A cgroup pattern as the hierarchy path it means: `/sys/fs/cgroup/memory/kubepods/*` and
/// `/kubepods/*` are one pattern.
fn hierarchy_pattern(pattern: &str) -> &str {
    SHELL_PREFIXES
        .iter()
        .find_map(|prefix| {
            pattern
                .strip_prefix(prefix)
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .map_or(pattern, |rest| if rest.is_empty() { "/" } else { rest })
}

/// One compiled rule.
struct Rule {
    index: usize,
    cgroup: Option<GlobMatcher>,
    namespace: Option<String>,
    pod: Option<GlobMatcher>,
    up_to_bytes: u64,
}

/// The allowances of the config, compiled.
pub(crate) struct Allowances {
    rules: Vec<Rule>,
}

/// The allowance a cgroup matched.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Allowed {
    pub up_to_bytes: u64,
    /// `leak.allow[i]`, and what it allows, for the evidence.
    pub description: String,
}

impl Allowances {
    /// Compiles `rules` (validated with the config: a pattern that does not compile is left out).
    pub(crate) fn new(rules: &[Allowance]) -> Allowances {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(index, a)| Rule {
                index,
                cgroup: a
                    .cgroup
                    .as_deref()
                    .and_then(|p| glob(hierarchy_pattern(p)).ok()),
                namespace: a.namespace.clone(),
                pod: a.pod.as_deref().and_then(|p| glob(p).ok()),
                up_to_bytes: a.up_to_bytes,
            })
            .collect();
        Allowances { rules }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule the cgroup at `path` (of pod `pod`, when it is one) matches.
    pub(crate) fn find(&self, path: &str, pod: Option<&PodMeta>) -> Option<Allowed> {
        self.rules
            .iter()
            .find(|r| {
                r.cgroup.as_ref().is_none_or(|g| g.is_match(path))
                    && r.namespace
                        .as_ref()
                        .is_none_or(|n| pod.is_some_and(|p| &p.namespace == n))
                    && r.pod
                        .as_ref()
                        .is_none_or(|g| pod.is_some_and(|p| g.is_match(&p.pod)))
            })
            .map(|r| Allowed {
                up_to_bytes: r.up_to_bytes,
                description: format!(
                    "leak.allow[{}]: growth up to {}",
                    r.index,
                    Bytes(r.up_to_bytes)
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cgroup: Option<&str>, namespace: Option<&str>, pod: Option<&str>) -> Allowance {
        Allowance {
            cgroup: cgroup.map(Into::into),
            namespace: namespace.map(Into::into),
            pod: pod.map(Into::into),
            up_to_bytes: 1 << 30,
        }
    }

    /// A kubelet cgroup path as this machine's v1 hierarchy shows it.
    const POD_PATH: &str = "/kubepods/burstable/pod4a0e7c1b-7e3f-4d6c-9f63-1f2d3c4b5a69/\
                            0c9c2d0f5b8e4a1d9e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d";

    #[test]
    fn a_cgroup_pattern_matches_as_typed_in_the_shell_or_as_the_hierarchy_path() {
        for pattern in [
            "/kubepods/**/pod4a0e7c1b-*/*",
            "/sys/fs/cgroup/memory/kubepods/**/pod4a0e7c1b-*/*",
            "/sys/fs/cgroup/kubepods/burstable/*/*",
        ] {
            let allowances = Allowances::new(&[rule(Some(pattern), None, None)]);
            assert!(allowances.find(POD_PATH, None).is_some(), "{pattern}");
        }
        // `*` does not cross levels.
        let one_level = Allowances::new(&[rule(Some("/kubepods/*"), None, None)]);
        assert_eq!(one_level.find(POD_PATH, None), None);
    }

    #[test]
    fn every_criterion_given_must_match() {
        let redis = PodMeta {
            namespace: "cache".into(),
            pod: "redis-0".into(),
            container: Some("redis".into()),
        };
        let allowances = Allowances::new(&[
            rule(None, Some("shop"), Some("redis-*")),
            rule(Some("/kubepods/**"), Some("cache"), Some("redis-*")),
        ]);
        let found = allowances.find(POD_PATH, Some(&redis)).expect("rule 1");
        assert_eq!(found.description, "leak.allow[1]: growth up to 1.0 GiB");
        // A namespace or pod criterion never matches a cgroup that is no pod.
        assert_eq!(allowances.find(POD_PATH, None), None);
        assert_eq!(
            allowances.find("/system.slice/redis.service", Some(&redis)),
            None
        );
    }

    #[test]
    fn a_bad_pattern_is_an_error_naming_it() {
        let e = glob("/kubepods/[").unwrap_err();
        assert!(e.contains("/kubepods/["), "{e}");
    }
}
