//! What `/proc` says about processes and the machine: a process' mappings and start time, its
//! resident memory, the files processes have open or mapped, the mounts, the page size and the
//! memory size. Every reader copes with processes that vanish mid-read (an error or nothing,
//! never a panic).

pub mod maps;
pub mod mem;
pub mod open_files;
pub mod process;
pub mod system;

pub use maps::{find, image, read_maps, start_time_ns, FileKey, Image, Mapping};
