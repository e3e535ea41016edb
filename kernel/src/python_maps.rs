//! The programs' `PYTHON` maps: the CPython processes whose Python frames the programs walk at
//! each sampled allocation. The always-on programs have one (kept across restarts with the
//! records), and each allocator trace's instance of the programs has its own; a process named
//! goes into every one, so a trace started later walks the processes found before it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::maps::{HashMap, MapData};
use memlens_common::python::PythonProcess;
use memlens_model::python::PythonProcesses;

/// Entries of a `PYTHON` map: CPython processes walked at once (a node's Python services and
/// their worker processes).
pub const PYTHON_PROCESSES: u32 = 2048;
/// Entries of a `PYTHON_THREADS` map: Python threads whose thread state is remembered.
pub const PYTHON_THREADS: u32 = 4096;

/// Kernel memory of the two maps: keys, values, and the hash tables' element headers.
#[must_use]
pub fn map_bytes() -> u64 {
    u64::from(PYTHON_PROCESSES) * (4 + size_of::<PythonProcess>() as u64 + 48)
        + u64::from(PYTHON_THREADS) * (4 + 8 + 48)
}

type Map = HashMap<MapData, u32, PythonProcess>;

#[derive(Default)]
struct Maps {
    named: BTreeMap<u32, PythonProcess>,
    maps: Vec<(u64, Map)>,
    next_id: u64,
}

/// Every `PYTHON` map of the agent's programs; cheap to clone.
#[derive(Clone, Default)]
pub struct PythonMaps(Arc<Mutex<Maps>>);

/// Holds a map among the [`PythonMaps`]; dropping it (with the trace it belongs to) takes it
/// out.
pub struct MapGuard {
    maps: PythonMaps,
    id: u64,
}

impl Drop for MapGuard {
    fn drop(&mut self) {
        let id = self.id;
        self.maps.lock().maps.retain(|(i, _)| *i != id);
    }
}

impl PythonMaps {
    fn lock(&self) -> MutexGuard<'_, Maps> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `map`: the processes it already names (a previous agent's, in the kept map) are
    /// taken as named, and those named before are written into it.
    pub(crate) fn add(&self, mut map: Map) -> MapGuard {
        let mut maps = self.lock();
        let kept: Vec<(u32, PythonProcess)> = map.iter().filter_map(Result::ok).collect();
        for (tgid, layout) in kept {
            maps.named.entry(tgid).or_insert(layout);
        }
        for (tgid, layout) in &maps.named {
            if let Err(e) = map.insert(tgid, layout, 0) {
                tracing::debug!("python map: naming {tgid}: {e}");
            }
        }
        maps.next_id += 1;
        let id = maps.next_id;
        maps.maps.push((id, map));
        MapGuard {
            maps: self.clone(),
            id,
        }
    }
}

impl PythonProcesses for PythonMaps {
    fn name(&mut self, tgid: u32, layout: &PythonProcess) -> bool {
        let mut maps = self.lock();
        if !maps.named.contains_key(&tgid) && maps.named.len() >= PYTHON_PROCESSES as usize {
            return false;
        }
        maps.named.insert(tgid, *layout);
        let mut all = true;
        for (_, map) in &mut maps.maps {
            if let Err(e) = map.insert(tgid, layout, 0) {
                tracing::debug!("python map: naming {tgid}: {e}");
                all = false;
            }
        }
        all
    }

    fn forget(&mut self, tgid: u32) {
        let mut maps = self.lock();
        if maps.named.remove(&tgid).is_none() {
            return;
        }
        for (_, map) in &mut maps.maps {
            let _ = map.remove(&tgid);
        }
    }

    fn named(&self) -> Vec<u32> {
        self.lock().named.keys().copied().collect()
    }
}
