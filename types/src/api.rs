//! The agent's HTTP API: each endpoint's route, method, query and answer, defined once for the
//! server that parses them and the client that sends them.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    allocations::{AllocationsQuery, AllocationsResponse, TraceRequest, TraceStatus},
    cgroups::{TopQuery, TopResponse},
    event::{CheckReport, Event, EventsQuery, EventsResponse},
    files::{CacheQuery, CacheResponse},
    history::{HistoryQuery, HistoryResponse},
    leaks::{LeaksQuery, LeaksResponse},
    lifecycle::{LifecycleQuery, LifecycleResponse},
    status::StatusResponse,
};

/// Where the agent listens by default.
pub const DEFAULT_SOCKET: &str = "/run/memlens/memlens.sock";

/// Body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// An HTTP method the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A query with no fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// One endpoint of the API.
pub trait Endpoint {
    const METHOD: Method;
    /// The route as the router matches it (`/v1/events/{id}` has a path parameter).
    const ROUTE: &'static str;
    type Query: Serialize + DeserializeOwned + Send + 'static;
    /// The JSON answer (`Vec<u8>` for binary answers: pprof, SVG).
    type Response;
}

macro_rules! endpoint {
    ($(#[$doc:meta])* $name:ident, $method:ident, $route:literal, $query:ty, $response:ty) => {
        $(#[$doc])*
        pub struct $name;

        impl Endpoint for $name {
            const METHOD: Method = Method::$method;
            const ROUTE: &'static str = $route;
            type Query = $query;
            type Response = $response;
        }
    };
}

endpoint!(
    /// One line per capability of the running agent.
    Status, Get, "/v1/status", NoQuery, StatusResponse
);
endpoint!(
    /// Memory cgroups by usage.
    Top, Get, "/v1/top", TopQuery, TopResponse
);
endpoint!(
    /// Stacks by growth and by held bytes.
    Leaks, Get, "/v1/leaks", LeaksQuery, LeaksResponse
);
endpoint!(
    /// The matching stacks as a gzip'd pprof profile.
    LeaksPprof, Get, "/v1/leaks/pprof", LeaksQuery, Vec<u8>
);
endpoint!(
    /// The matching stacks as a flame graph (SVG).
    LeaksFlamegraph, Get, "/v1/leaks/flamegraph", LeaksQuery, Vec<u8>
);
endpoint!(
    /// Stacks by bytes held according to the allocations themselves (a process's own profile).
    Allocations, Get, "/v1/allocations", AllocationsQuery, AllocationsResponse
);
endpoint!(
    /// The processes' allocation profiles as one gzip'd pprof profile.
    AllocationsPprof, Get, "/v1/allocations/pprof", AllocationsQuery, Vec<u8>
);
endpoint!(
    /// The processes' allocation profiles as a flame graph of bytes in use (SVG).
    AllocationsFlamegraph, Get, "/v1/allocations/flamegraph", AllocationsQuery, Vec<u8>
);
endpoint!(
    /// Starts an allocator trace.
    Traces, Post, "/v1/traces", TraceRequest, TraceStatus
);
endpoint!(
    /// One allocator trace's state and cost.
    TraceById, Get, "/v1/traces/{id}", NoQuery, TraceStatus
);
endpoint!(
    /// Stops an allocator trace (its results stay).
    TraceStop, Post, "/v1/traces/{id}/stop", NoQuery, TraceStatus
);
endpoint!(
    /// The working set explained; page cache by file.
    Cache, Get, "/v1/cache", CacheQuery, CacheResponse
);
endpoint!(
    /// A cgroup's recorded memory over time.
    History, Get, "/v1/history", HistoryQuery, HistoryResponse
);
endpoint!(
    /// Process exits, OOM kills, cgroups created and removed.
    Lifecycle, Get, "/v1/lifecycle", LifecycleQuery, LifecycleResponse
);
endpoint!(
    /// Events, newest first.
    Events, Get, "/v1/events", EventsQuery, EventsResponse
);
endpoint!(
    /// One event by id (`/v1/events/7`).
    EventById, Get, "/v1/events/{id}", NoQuery, Event
);
endpoint!(
    /// Runs the detectors now.
    EventsCheck, Post, "/v1/events/check", NoQuery, CheckReport
);

/// The routes of the Unix-socket API, for "no such endpoint" answers.
pub const ROUTES: [&str; 12] = [
    Status::ROUTE,
    Top::ROUTE,
    Leaks::ROUTE,
    Allocations::ROUTE,
    Traces::ROUTE,
    TraceById::ROUTE,
    Cache::ROUTE,
    History::ROUTE,
    Lifecycle::ROUTE,
    Events::ROUTE,
    EventsCheck::ROUTE,
    "/metrics",
];
