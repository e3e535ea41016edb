//! Exports of leak attribution in formats other tools read: pprof profiles (`go tool pprof`,
//! Pyroscope, Parca) and flame graphs (inferno).

pub mod flamegraph;
pub mod pprof;
