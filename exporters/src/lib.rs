//! Exports in formats other tools read: pprof profiles (`go tool pprof`, Pyroscope, Parca), flame
//! graphs (inferno), and the Prometheus exposition.

pub mod flamegraph;
pub mod pprof;
pub mod prometheus;
