//! Collectors: turn kernel maps and kernel files into plain data for the model.

pub mod pages;
pub mod stacks;
