//! `/proc/<pid>/mem`: another process's memory, read at its own addresses. Needs what ptrace
//! needs (root with `CAP_SYS_PTRACE`, the agent's privileges); the process is not stopped, so a
//! reader must treat what it reads as possibly torn and check it.

use std::{fs::File, io, os::unix::fs::FileExt as _};

/// An open handle on a process's memory.
#[derive(Debug)]
pub struct ProcessMemory {
    file: File,
}

impl ProcessMemory {
    /// Opens the memory of process `pid`.
    pub fn open(pid: u32) -> io::Result<ProcessMemory> {
        Ok(ProcessMemory {
            file: File::open(format!("/proc/{pid}/mem"))?,
        })
    }

    /// Fills `buf` from the process's address `addr`; an unmapped address is an error.
    pub fn read_at(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    /// `n` native-endian 8-byte words at `addr`.
    pub fn words(&self, addr: u64, n: usize) -> io::Result<Vec<u64>> {
        let mut buf = vec![0u8; n.checked_mul(8).ok_or(io::ErrorKind::InvalidInput)?];
        self.read_at(addr, &mut buf)?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }

    /// The 8-byte word at `addr`.
    pub fn word(&self, addr: u64) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        self.read_at(addr, &mut buf)?;
        Ok(u64::from_ne_bytes(buf))
    }
}

/// Fills `buf` from process `pid`'s address `addr` without opening anything
/// (`process_vm_readv`: no descriptor is held between reads, however many processes are read);
/// a read that comes up short (an unmapped page) is an error.
pub fn read_remote(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf`, which outlives the call; the kernel checks the remote
    // range and fails (or comes up short) on what is not mapped there.
    let read = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    match usize::try_from(read) {
        Err(_) => Err(io::Error::last_os_error()),
        Ok(n) if n < buf.len() => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static KNOWN: [u64; 3] = [0x1122_3344_5566_7788, 42, u64::MAX];

    #[test]
    fn reads_this_process_at_its_own_addresses() {
        let mem = ProcessMemory::open(std::process::id()).expect("own memory");
        let addr = KNOWN.as_ptr() as u64;
        assert_eq!(mem.words(addr, 3).expect("words"), KNOWN);
        assert_eq!(mem.word(addr + 8).expect("word"), 42);
        assert!(mem.word(8).is_err(), "page zero is not mapped");
    }

    #[test]
    fn reads_without_a_descriptor_and_fails_on_unmapped_memory() {
        let mut buf = [0u8; 16];
        read_remote(std::process::id(), KNOWN.as_ptr() as u64, &mut buf).expect("own memory");
        assert_eq!(u64::from_ne_bytes(buf[..8].try_into().unwrap()), KNOWN[0]);
        assert!(read_remote(std::process::id(), 8, &mut buf).is_err());
    }
}
