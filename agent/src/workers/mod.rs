//! The agent's threads: the refresh (census, attribution, snapshot, history), the unwinder of
//! stack copies, the lifecycle drain, and the event engine. Each beats a [`crate::health::Heartbeat`] after every round.

pub mod engine;
pub mod heap;
pub mod lifecycle;
pub mod pacing;
pub mod refresh;
pub mod unwind;
