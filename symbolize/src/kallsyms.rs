//! Kernel function names from `/proc/kallsyms`, kept compactly: the functions' start addresses,
//! sorted, and their names in one string (about 4.3 MiB for the 122,000 functions here, where
//! blazesym's kallsyms table took 6-11 MiB). Reading the file takes about 0.1 s of kernel time,
//! so it is read once and again only when a name is missing and the table is older than
//! [`MAX_AGE`] (modules loaded since).

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    time::{Duration, Instant},
};

const KALLSYMS: &str = "/proc/kallsyms";
/// A table this old is read again when an address has no name.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// The kernel's functions by start address.
pub struct KernelSymbols {
    starts: Vec<u64>,
    /// Where each function's name begins in `names` (it ends at the next newline).
    name_at: Vec<u32>,
    names: String,
    pub read_at: Instant,
}

impl KernelSymbols {
    pub fn read() -> io::Result<KernelSymbols> {
        KernelSymbols::parse(BufReader::new(File::open(KALLSYMS)?))
    }

    fn parse(reader: impl BufRead) -> io::Result<KernelSymbols> {
        let mut names = String::new();
        let mut found: Vec<(u64, u32)> = Vec::new();
        each_function(reader, |start, name| {
            if let Ok(at) = u32::try_from(names.len()) {
                found.push((start, at));
                names.push_str(name);
                names.push('\n');
            }
        })?;
        // The first name listed at an address is kept (a stable sort, then dedup).
        found.sort_by_key(|&(start, _)| start);
        found.dedup_by_key(|&mut (start, _)| start);
        names.shrink_to_fit();
        Ok(KernelSymbols {
            starts: found.iter().map(|&(start, _)| start).collect(),
            name_at: found.iter().map(|&(_, at)| at).collect(),
            names,
            read_at: Instant::now(),
        })
    }

    /// The name of the function holding `addr`; `None` where no function does, or when the
    /// kernel hides its addresses (they read as zero without `CAP_SYSLOG`).
    pub fn name(&self, addr: u64) -> Option<&str> {
        if self.starts.last().is_none_or(|&last| last == 0) {
            return None;
        }
        let i = self
            .starts
            .partition_point(|&start| start <= addr)
            .checked_sub(1)?;
        let at = usize::try_from(*self.name_at.get(i)?).ok()?;
        self.names.get(at..)?.split('\n').next()
    }
}

/// Calls `found` with the start address and name of each function (text symbol) listed.
fn each_function(mut reader: impl BufRead, mut found: impl FnMut(u64, &str)) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut fields = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "w" | "W") {
            continue;
        }
        if let Ok(addr) = u64::from_str_radix(addr, 16) {
            found(addr, name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// Lines as `/proc/kallsyms` lists them (kernel 6.18): several names at one address,
    /// modules' functions, a data symbol.
    const FIXTURE: &str = "\
ffffffff81000000 T srso_alias_untrain_ret
ffffffff81000000 T _stext
ffffffff812a0c40 T __alloc_pages_noprof
ffffffff812a0f10 t get_page_from_freelist
ffffffff82a01000 D init_task
ffffffff812a1a00 T __folio_alloc_noprof
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0a05120 t ext4_da_write_begin\t[ext4]
";

    fn symbols(text: &'static str) -> KernelSymbols {
        KernelSymbols::parse(Cursor::new(text)).unwrap()
    }

    #[test]
    fn each_address_gets_the_function_it_is_in() {
        let s = symbols(FIXTURE);
        assert_eq!(
            s.name(0xffff_ffff_812a_0f11),
            Some("get_page_from_freelist")
        );
        assert_eq!(s.name(0xffff_ffff_812a_0c40), Some("__alloc_pages_noprof"));
        assert_eq!(s.name(0xffff_ffff_c0a0_5200), Some("ext4_da_write_begin"));
        assert_eq!(
            s.name(0xffff_ffff_8100_0008),
            Some("srso_alias_untrain_ret")
        );
        assert_eq!(s.name(0x1000), None);
    }

    #[test]
    fn data_symbols_are_not_functions() {
        assert_eq!(
            symbols(FIXTURE).name(0xffff_ffff_82a0_1008),
            Some("__folio_alloc_noprof"),
            "init_task is data: the address is past the last function before it"
        );
    }

    #[test]
    fn hidden_addresses_give_no_names() {
        let hidden = symbols("0000000000000000 T _stext\n0000000000000000 T schedule\n");
        assert_eq!(hidden.name(0xffff_ffff_8100_0000), None);
    }

    #[test]
    fn this_kernel_names_its_own_functions() {
        let mut schedule = None;
        each_function(
            BufReader::new(File::open(KALLSYMS).expect("kallsyms")),
            |start, name| {
                if name == "schedule" {
                    schedule = Some(start);
                }
            },
        )
        .unwrap();
        let Some(start) = schedule.filter(|&s| s != 0) else {
            panic!("schedule's address is hidden: run the tests as root");
        };
        assert_eq!(
            KernelSymbols::read().unwrap().name(start + 1),
            Some("schedule")
        );
    }
}
