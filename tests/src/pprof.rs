//! Reading back the pprof profiles the agent writes.

use std::io::Read as _;

use pprof::protos::{Message as _, Profile};

/// A gzip'd pprof profile, decoded.
#[must_use]
pub fn decode(gzipped: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut raw)
        .expect("gunzip");
    Profile::decode(raw.as_slice()).expect("protobuf decodes")
}

/// In-use bytes (`inuse_space`) of the samples of `profile` whose stack has `function`.
#[must_use]
pub fn inuse_in(profile: &Profile, function: &str) -> u64 {
    let name = |i: i64| profile.string_table[i as usize].as_str();
    let inuse = profile
        .sample_type
        .iter()
        .position(|t| name(t.ty) == "inuse_space")
        .expect("inuse_space");
    let has_function = |location_id: u64| {
        profile
            .location
            .iter()
            .find(|l| l.id == location_id)
            .is_some_and(|l| {
                l.line.iter().any(|line| {
                    profile
                        .function
                        .iter()
                        .find(|f| f.id == line.function_id)
                        .is_some_and(|f| name(f.name) == function)
                })
            })
    };
    profile
        .sample
        .iter()
        .filter(|s| s.location_id.iter().any(|&l| has_function(l)))
        .map(|s| s.value[inuse] as u64)
        .sum()
}
