//! Collectors: turn kernel maps and kernel files into plain data for the model.

pub mod filecache;
pub mod files;
pub mod lifecycle;
pub mod pages;
pub mod stacks;
