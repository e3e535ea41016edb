//! Builds the kernel programs and puts the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! The object is rebuilt by cargo whenever its sources or bpf-linker change, so the embedded
//! object can never be stale; when the BPF toolchain is missing the build fails and says how to
//! install it, rather than embedding an old or empty object.

#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

use std::{env, path::PathBuf, process::exit};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let Some(root) = manifest_dir.parent() else {
        eprintln!("error: kernel/ must live in the memlens workspace");
        exit(1);
    };
    for input in ebpf_build::inputs(root) {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    let object = match ebpf_build::build(root) {
        Ok(object) => object,
        Err(e) => {
            eprintln!("error: {e}");
            exit(1);
        }
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("memlens.bpf.o");
    if let Err(e) = std::fs::copy(&object, &out) {
        eprintln!(
            "error: cannot copy {} to {}: {e}",
            object.display(),
            out.display()
        );
        exit(1);
    }
}
