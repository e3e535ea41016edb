//! Collectors: turn kernel maps and the kernel's page state into plain data for the model.

pub mod alloc_events;
pub mod census;
pub mod lifecycle;
pub mod page_cache;
pub mod stack_copies;
pub mod stack_gc;
