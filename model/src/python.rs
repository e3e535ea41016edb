//! The Python frames of unwound stacks, each kept once and named by a [`PythonFrameId`]: the
//! unwinder interns the frames it resolves, the symbolizer reads them back, and the agent saves
//! the table with the stacks that refer to it (ids are never reused, so a saved stack's frames
//! mean the same after a restart).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

pub use memlens_common::python::PythonProcess;
pub use memlens_types::stack::{PythonFrame, PythonFrameId};

/// Most distinct Python frames kept (a frame is a function and a line: a large service has tens
/// of thousands). Frames past the bound share one that says so.
pub const MAX_PYTHON_FRAMES: usize = 1 << 17;

/// The frame standing for those past [`MAX_PYTHON_FRAMES`]; always id 0.
pub const TABLE_FULL: PythonFrameId = PythonFrameId(0);

/// Where the CPython processes whose Python frames the kernel programs walk are named: the
/// programs' `PYTHON` map, written by whoever finds the processes (the unwinder).
pub trait PythonProcesses: Send {
    /// Names process `tgid` with its interpreter's layout; false when there is no room.
    fn name(&mut self, tgid: u32, layout: &PythonProcess) -> bool;
    /// Forgets process `tgid` (it ended, or is not what it was named as).
    fn forget(&mut self, tgid: u32);
    /// The processes named now, some perhaps by the agent before this one.
    fn named(&self) -> Vec<u32>;
}

/// The table of Python frames, shared by the threads that write and read it.
#[derive(Debug)]
pub struct PythonFrames {
    table: Mutex<Table>,
    /// Frames not kept because the table was full.
    pub dropped: AtomicU64,
}

#[derive(Debug)]
struct Table {
    by_id: Vec<Arc<PythonFrame>>,
    ids: foldhash::HashMap<Arc<PythonFrame>, PythonFrameId>,
    /// Ids below this are saved.
    saved: usize,
}

impl Default for PythonFrames {
    fn default() -> PythonFrames {
        let full = Arc::new(PythonFrame {
            function: "[Python frames: table full]".into(),
            file: "".into(),
            line: 0,
        });
        let mut ids = foldhash::HashMap::default();
        ids.insert(Arc::clone(&full), TABLE_FULL);
        PythonFrames {
            table: Mutex::new(Table {
                by_id: vec![full],
                ids,
                saved: 0,
            }),
            dropped: AtomicU64::new(0),
        }
    }
}

impl PythonFrames {
    /// The id of `frame`, given to it now if it had none.
    pub fn intern(&self, frame: PythonFrame) -> PythonFrameId {
        let Ok(mut t) = self.table.lock() else {
            return TABLE_FULL;
        };
        if let Some(&id) = t.ids.get(&frame) {
            return id;
        }
        if t.by_id.len() >= MAX_PYTHON_FRAMES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return TABLE_FULL;
        }
        let Ok(id) = u32::try_from(t.by_id.len()).map(PythonFrameId) else {
            return TABLE_FULL;
        };
        let frame = Arc::new(frame);
        t.by_id.push(Arc::clone(&frame));
        t.ids.insert(frame, id);
        id
    }

    /// The frame `id` names.
    #[must_use]
    pub fn get(&self, id: PythonFrameId) -> Option<Arc<PythonFrame>> {
        let t = self.table.lock().ok()?;
        t.by_id.get(id.0 as usize).cloned()
    }

    /// Frames kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.table.lock().map_or(0, |t| t.by_id.len())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frames not saved yet, to be saved and then marked with [`PythonFrames::saved`].
    #[must_use]
    pub fn unsaved(&self) -> Vec<(PythonFrameId, Arc<PythonFrame>)> {
        let Ok(t) = self.table.lock() else {
            return Vec::new();
        };
        (t.saved..t.by_id.len())
            .filter_map(|i| {
                Some((
                    PythonFrameId(u32::try_from(i).ok()?),
                    Arc::clone(&t.by_id[i]),
                ))
            })
            .collect()
    }

    /// Marks the frames up to `through` as saved.
    pub fn saved(&self, through: PythonFrameId) {
        if let Ok(mut t) = self.table.lock() {
            t.saved = t.saved.max(through.0 as usize + 1);
        }
    }

    /// Takes back the frames a previous agent saved, at their ids; called before any frame is
    /// interned. Ids must run from 0 without gaps (as saved); the first gap ends what is taken.
    pub fn restore(&self, mut saved: Vec<(PythonFrameId, PythonFrame)>) {
        let Ok(mut t) = self.table.lock() else {
            return;
        };
        saved.sort_unstable_by_key(|(id, _)| *id);
        for (id, frame) in saved {
            if id == TABLE_FULL {
                continue;
            }
            if id.0 as usize != t.by_id.len() || t.by_id.len() >= MAX_PYTHON_FRAMES {
                break;
            }
            let frame = Arc::new(frame);
            t.by_id.push(Arc::clone(&frame));
            t.ids.insert(frame, id);
        }
        t.saved = t.by_id.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, line: u32) -> PythonFrame {
        PythonFrame {
            function: function.into(),
            file: "/srv/app.py".into(),
            line,
        }
    }

    #[test]
    fn a_frame_keeps_its_id_and_saved_ids_come_back_after_a_restart() {
        let frames = PythonFrames::default();
        let a = frames.intern(frame("grow", 10));
        let b = frames.intern(frame("grow", 11));
        assert_ne!(a, b);
        assert_ne!(a, TABLE_FULL);
        assert_eq!(frames.intern(frame("grow", 10)), a);
        assert_eq!(frames.get(b).map(|f| f.line), Some(11));
        let unsaved = frames.unsaved();
        assert_eq!(unsaved.len(), 3, "the table-full frame and two");
        frames.saved(b);
        assert!(frames.unsaved().is_empty());

        let restarted = PythonFrames::default();
        restarted.restore(
            unsaved
                .iter()
                .map(|(id, f)| (*id, PythonFrame::clone(f)))
                .collect(),
        );
        assert_eq!(restarted.get(a).map(|f| f.line), Some(10));
        assert_eq!(restarted.intern(frame("grow", 11)), b);
        let c = restarted.intern(frame("main", 3));
        assert_eq!(c.0, 3, "new ids follow the saved ones");
        assert_eq!(restarted.unsaved().len(), 1);
    }

    #[test]
    fn past_the_bound_frames_share_the_table_full_frame() {
        let frames = PythonFrames::default();
        for line in 1..MAX_PYTHON_FRAMES as u32 {
            frames.intern(frame("f", line));
        }
        assert_eq!(frames.len(), MAX_PYTHON_FRAMES);
        assert_eq!(frames.intern(frame("g", 1)), TABLE_FULL);
        assert_eq!(frames.dropped.load(Ordering::Relaxed), 1);
    }
}
