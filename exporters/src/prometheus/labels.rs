//! Label sets of the exposition, and the label value type that escapes what the outside world
//! named.

use std::fmt::Write as _;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{family::Family, histogram::Histogram},
};

/// A label value, with backslash, double quote and newline escaped as both exposition formats
/// require.
/// prometheus-client writes label values as they are, and the values here come from the
/// outside world: a file named `a"b}` + newline + `fake_metric 1` would otherwise end the label
/// early, break the whole exposition and inject samples of its author's choosing.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Label(pub String);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

impl From<&str> for Label {
    fn from(text: &str) -> Label {
        Label(text.to_string())
    }
}

impl From<String> for Label {
    fn from(text: String) -> Label {
        Label(text)
    }
}

/// cAdvisor's labels for a cgroup: `id` is its path; the names are empty when not a pod's.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CgroupLabels {
    pub id: Label,
    pub namespace: Label,
    pub pod: Label,
    pub container: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub id: Label,
    pub kind: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FileLabels {
    pub id: Label,
    pub file: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StackLabels {
    pub id: Label,
    pub stack: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EventLabels {
    pub kind: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct NameLabels {
    pub name: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Label,
}

/// API latency by route, kept across scrapes.
#[derive(Clone)]
pub struct ApiLatency(pub Family<RouteLabels, Histogram>);

impl Default for ApiLatency {
    fn default() -> ApiLatency {
        ApiLatency(Family::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0])
        }))
    }
}
