//! `cargo xtask bench filecache`: page-cache tracking on a cold read and a buffered write.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use super::{build_workload, ratio_table, start_agent, stop, BpfStats};
use crate::util;

/// The file system the bench's files are on.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Fs {
    /// The root file system (a disk, not a tmpfs).
    Root,
    /// ext4 with `data=journal` on a loop device: page cache in 4 KiB folios (ext4 in its
    /// default mode, ext2 and ext3 add large folios here: 128 MiB read in 360-530 adds; with
    /// `data=journal`, 32,850).
    Ext4Journal,
}

/// An ext4 file system with `data=journal` made for the bench in an image file, unmounted and
/// detached on drop.
struct LoopFs {
    device: String,
    mount: PathBuf,
}

impl LoopFs {
    /// An image of `mib` MiB in `dir`, on a loop device with direct I/O (no second page cache
    /// below the one measured), formatted ext4 and mounted with `data=journal`.
    fn create(dir: &Path, mib: usize) -> Result<LoopFs> {
        let image = dir.join("ext4.img");
        std::fs::File::create(&image)?.set_len((mib as u64) << 20)?;
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&image)
            .output()
            .context("losetup")?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mount = dir.join("ext4");
        let fs = LoopFs { device, mount };
        util::run(Command::new("mkfs.ext4").args(["-q", "-F", &fs.device]))?;
        std::fs::create_dir_all(&fs.mount)?;
        util::run(
            Command::new("mount")
                .args(["-o", "data=journal"])
                .arg(&fs.device)
                .arg(&fs.mount),
        )?;
        Ok(fs)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// `cargo xtask bench filecache`.
pub(super) fn file_cache(root: &Path, rounds: usize, mib: usize, fs: Fs) -> Result<()> {
    let memlens = util::build_release(root)?;
    let workload = build_workload(root)?;
    let dir = Path::new("/var/tmp").join(format!("memlens-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("memlens.sock");
    let loop_fs = match fs {
        Fs::Root => None,
        Fs::Ext4Journal => Some(LoopFs::create(&dir, 2 * mib + 256)?),
    };
    let files = loop_fs.as_ref().map_or(dir.clone(), |l| l.mount.clone());
    let data = files.join("read.bin");
    let written = files.join("write.bin");
    let result = (|| -> Result<()> {
        let timed = |args: &[&std::ffi::OsStr]| -> Result<f64> {
            let started = Instant::now();
            let status = Command::new(&workload)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("memlens-workload {args:?} failed");
            }
            Ok(started.elapsed().as_secs_f64())
        };
        let size = mib.to_string();
        timed(&["writefile".as_ref(), data.as_os_str(), size.as_ref()])?;
        let mut read = [Vec::new(), Vec::new()];
        let mut write = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for i in [round % 2, 1 - round % 2] {
                // Cold: written back and dropped from the page cache; no leftover write file, and
                // no writeback of an earlier round still running.
                let _ = std::fs::remove_file(&written);
                drop_file_cache(&data)?;
                // SAFETY: sync(2) has no preconditions.
                unsafe { libc::sync() };
                let agent = if i == 1 {
                    Some(start_agent(&memlens, &socket, &[])?)
                } else {
                    None
                };
                read[i].push(timed(&["readfile".as_ref(), data.as_os_str()])?);
                write[i].push(timed(&[
                    "writefile".as_ref(),
                    written.as_os_str(),
                    size.as_ref(),
                ])?);
                if let Some(mut agent) = agent {
                    stop(&mut agent);
                }
            }
            eprintln!(
                "round {}/{rounds}: read x{:.3}, write x{:.3}",
                round + 1,
                read[1][round] / read[0][round],
                write[1][round] / write[0][round]
            );
        }
        // The programs' own cost, from the kernel's statistics, in a separate round.
        let stats = BpfStats::enable()?;
        let _ = std::fs::remove_file(&written);
        drop_file_cache(&data)?;
        let mut agent = start_agent(&memlens, &socket, &[])?;
        let read_s = timed(&["readfile".as_ref(), data.as_os_str()])?;
        let write_s = timed(&["writefile".as_ref(), written.as_os_str(), size.as_ref()])?;
        // The run counts in `status` are the last refresh's (every 2 s): wait for one.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let status = Command::new(&memlens)
            .arg("--socket")
            .arg(&socket)
            .args(["status", "--json"])
            .output()?;
        stop(&mut agent);
        drop(stats);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        println!("## page cache: {mib} MiB cold sequential read and buffered write on {fs:?}, {rounds} interleaved rounds");
        println!();
        for program in status["programs"].as_array().into_iter().flatten() {
            let name = program["name"].as_str().unwrap_or("?");
            let runs = program["run_count"].as_u64().unwrap_or(0);
            if name.starts_with("filemap") && runs > 0 {
                let ns = program["run_time_ns"].as_u64().unwrap_or(0);
                println!(
                    "- {name}: {runs} runs in one read + write round ({read_s:.2} s + {write_s:.2} s), {:.0} ns per run including the statistics' own cost, {:.2}% of the round's time",
                    ns as f64 / runs as f64,
                    100.0 * ns as f64 / 1e9 / (read_s + write_s)
                );
            }
        }
        println!();
        println!();
        ratio_table(&[("cold sequential read", &read), ("buffered write", &write)]);
        Ok(())
    })();
    drop(loop_fs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Writes back and drops `path`'s page cache, so the next read comes from the disk.
fn drop_file_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    // SAFETY: advisory call on a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!("posix_fadvise: error {rc}");
    }
    Ok(())
}
