//! Kernel function names from `/proc/kallsyms`, read when addresses without a name turn up and
//! not kept: the names found are cached per address by the symbolizer, so after the first
//! minutes a read is rare, while blazesym's kallsyms table (every symbol with its name) took
//! 6-11 MiB of the agent's heap for as long as it lived, and was parsed again after each drop of
//! its file caches. A read goes over the file twice (about 120,000 lines here): once for the
//! functions' start addresses, once for the names of the few that hold the wanted addresses.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufRead, BufReader},
};

const KALLSYMS: &str = "/proc/kallsyms";

/// The names of the functions holding `addrs`, in order; `None` where no function does (or the
/// kernel hides its addresses: they read as zero without `CAP_SYSLOG`).
pub fn function_names(addrs: &[u64]) -> io::Result<Vec<Option<String>>> {
    names_in(|| File::open(KALLSYMS).map(BufReader::new), addrs)
}

/// [`function_names`] with the symbol table read from what `open` gives (twice).
fn names_in<R: BufRead>(
    open: impl Fn() -> io::Result<R>,
    addrs: &[u64],
) -> io::Result<Vec<Option<String>>> {
    let mut starts = Vec::new();
    each_function(open()?, |start, _| starts.push(start))?;
    starts.sort_unstable();
    starts.dedup();
    if starts.last().is_none_or(|&last| last == 0) {
        return Ok(vec![None; addrs.len()]);
    }
    let holder = |addr: u64| {
        let above = starts.partition_point(|&start| start <= addr);
        above.checked_sub(1).map(|i| starts[i])
    };
    let mut wanted: BTreeMap<u64, Option<String>> = addrs
        .iter()
        .filter_map(|&a| holder(a))
        .map(|s| (s, None))
        .collect();
    each_function(open()?, |start, name| {
        if let Some(slot @ None) = wanted.get_mut(&start) {
            *slot = Some(name.to_owned());
        }
    })?;
    Ok(addrs
        .iter()
        .map(|&a| holder(a).and_then(|s| wanted.get(&s).cloned().flatten()))
        .collect())
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

    fn names(text: &'static str, addrs: &[u64]) -> Vec<Option<String>> {
        names_in(|| Ok(Cursor::new(text)), addrs).unwrap()
    }

    #[test]
    fn each_address_gets_the_function_it_is_in() {
        assert_eq!(
            names(
                FIXTURE,
                &[
                    0xffff_ffff_812a_0f11,
                    0xffff_ffff_812a_0c40,
                    0xffff_ffff_c0a0_5200,
                    0x1000
                ]
            ),
            [
                Some("get_page_from_freelist".into()),
                Some("__alloc_pages_noprof".into()),
                Some("ext4_da_write_begin".into()),
                None,
            ]
        );
    }

    #[test]
    fn data_symbols_are_not_functions() {
        assert_eq!(
            names(FIXTURE, &[0xffff_ffff_82a0_1008]),
            [Some("__folio_alloc_noprof".into())],
            "init_task is data: the address is past the last function before it"
        );
    }

    #[test]
    fn hidden_addresses_give_no_names() {
        let hidden = "0000000000000000 T _stext\n0000000000000000 T schedule\n";
        assert_eq!(names(hidden, &[0xffff_ffff_8100_0000]), [None]);
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
            function_names(&[start + 1]).unwrap(),
            [Some("schedule".into())]
        );
    }
}
