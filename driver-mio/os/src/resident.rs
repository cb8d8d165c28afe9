//! Resident memory after start-up. Start-up touches code that never runs again (argument
//! parsing, configuration, TLS and registration): once every connection is registered, the
//! clean pages of read-only file mappings (the binary's text, rodata and relocated
//! constants, libc's) are dropped from this process's page tables, and the executable's own
//! pages from the page cache too, unless another process maps them.
//!
//! Why the page cache as well: a page fault maps not one page but every cached page of the
//! 64 KiB around it (the kernel's fault-around). With the whole binary cached, the few
//! pages an idle loop reads (keep-alives, ACKs, timers) brought back their neighbours too:
//! 448 kB of constants and 336 kB of relocated constants in a burrow-mio idle with 4
//! connections, 120 kB and 40 kB with only the pages in use cached. Read-ahead is off for
//! the executable's mappings (`MADV_RANDOM`) while that working set faults back in, so each
//! fault reads its own page only, then [`SETTLE`] later it is back on, for what runs later
//! (a burst of traffic, a reconnect) to come in with read-ahead as usual. Code is the
//! exception: Linux (6.18 at least) reads ahead from a fault in an executable mapping
//! whatever the advice, so the text comes back cached and faults back in 64 KiB at a time.
//!
//! Private copies (an anonymous page in a mapping: relocated RELRO, anything written) are
//! never dropped: dropping those would lose their contents. Those are found page by page in
//! `/proc/self/pagemap`, the clean file pages around them still dropped.

use std::ffi::c_void;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use tracing::debug;

/// How long after the trim read-ahead stays off for the executable: the idle loop's code is
/// back within a second or two (keep-alives run every second).
pub const SETTLE: Duration = Duration::from_secs(30);

/// Trims start-up's pages once, when every connection has registered the first time.
#[derive(Debug, Default)]
pub struct StartupTrim {
    /// When the trim was done; `None` before it, and again once read-ahead is back on.
    trimmed: Option<Instant>,
    done: bool,
}

impl StartupTrim {
    /// Not trimmed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trims the first time `ready` registered connections reach `wanted`; [`SETTLE`] after
    /// it, turns read-ahead back on. Called on every turn of the event loop.
    pub fn on_ready(&mut self, now: Instant, ready: usize, wanted: usize) {
        if !self.done && ready >= wanted {
            self.done = true;
            trim_file_pages();
            self.trimmed = Some(now);
        } else if self
            .trimmed
            .is_some_and(|t| now.saturating_duration_since(t) >= SETTLE)
        {
            self.trimmed = None;
            for m in exe_mappings() {
                advise(&m, rustix::mm::Advice::Normal);
            }
        }
    }
}

/// One mapping from /proc/self/smaps.
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    file: bool,
    /// The executable's own (`/proc/self/exe`).
    exe: bool,
    /// Pages of this mapping that are private copies, not the file's (kB).
    anonymous_kb: u64,
}

/// The size of a page (pagemap has one entry per page).
const PAGE: usize = 4096;

/// Drops the clean pages of read-only file mappings, and the executable's from the page
/// cache; the bytes given back.
pub fn trim_file_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let exe = std::fs::read_link("/proc/self/exe").ok();
    let exe = exe.as_deref().and_then(|p| p.to_str());
    let pagemap = File::open("/proc/self/pagemap").ok();
    let page_ok = rustix::param::page_size() == PAGE;
    let mut freed = 0;
    for m in parse(&smaps, exe) {
        if m.writable || !m.file {
            continue;
        }
        if m.exe {
            // Before the drop: the faults that follow read their own page only.
            advise(&m, rustix::mm::Advice::Random);
        }
        if m.anonymous_kb == 0 {
            freed += drop_range(m.start, m.end);
            continue;
        }
        // Private copies inside: drop the runs of pages around them.
        let Some(pagemap) = pagemap.as_ref().filter(|_| page_ok) else {
            continue;
        };
        let Some(keep) = private_pages(pagemap, &m) else {
            continue;
        };
        let mut run = m.start;
        for (i, keep) in keep.iter().enumerate() {
            let at = m.start + i * PAGE;
            if *keep {
                freed += drop_range(run, at);
                run = at + PAGE;
            }
        }
        freed += drop_range(run, m.end);
    }
    // The executable's pages nobody maps any more leave the page cache: what faults back in
    // is read again, page by page (see the module's note).
    if let Ok(f) = File::open("/proc/self/exe") {
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
    debug!(freed, "gave back clean file pages");
    freed
}

/// For each page of `m`, whether it must be kept: a private copy (present and not the
/// file's) or swapped out. `None` when pagemap cannot be read.
fn private_pages(pagemap: &File, m: &Mapping) -> Option<Vec<bool>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE: u64 = 1 << 61;
    let pages = (m.end - m.start) / PAGE;
    let mut raw = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut raw, (m.start / PAGE * 8) as u64)
        .ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let e = u64::from_ne_bytes(e.try_into().unwrap_or_default());
                e & SWAPPED != 0 || (e & PRESENT != 0 && e & FILE == 0)
            })
            .collect(),
    )
}

/// `MADV_DONTNEED` over `[start, end)` of a read-only file mapping holding only the file's
/// pages there; the bytes covered.
fn drop_range(start: usize, end: usize) -> usize {
    if end <= start {
        return 0;
    }
    // SAFETY: the range lies in a read-only, file-backed mapping of this process and holds no
    // private copy (the caller checked), so MADV_DONTNEED only drops page-table entries that
    // the next access refills from the same file: no content is lost.
    let done = unsafe {
        rustix::mm::madvise(
            start as *mut c_void,
            end - start,
            rustix::mm::Advice::LinuxDontNeed,
        )
    };
    if done.is_ok() {
        end - start
    } else {
        0
    }
}

/// Read-ahead advice for a whole mapping.
fn advise(m: &Mapping, advice: rustix::mm::Advice) {
    // SAFETY: MADV_RANDOM and MADV_NORMAL only change read-ahead for the range, a whole
    // mapping of this process; no content changes.
    let _ = unsafe { rustix::mm::madvise(m.start as *mut c_void, m.end - m.start, advice) };
}

/// The executable's read-only mappings now.
fn exe_mappings() -> Vec<Mapping> {
    let (Ok(smaps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return Vec::new();
    };
    parse(&smaps, exe.to_str())
        .into_iter()
        .filter(|m| m.exe && !m.writable)
        .collect()
}

/// The mappings of an smaps (or maps) text, those of the file `exe` marked (unreadable
/// lines skipped).
fn parse(smaps: &str, exe: Option<&str>) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            if let Some(m) = out.last_mut() {
                m.anonymous_kb = kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(u64::MAX);
            }
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if perms.len() != 4 || end <= start {
            continue;
        }
        // offset, device, inode, then the path (absent for anonymous memory; the only field
        // with a '/', and it may hold spaces).
        let path = line.find('/').map(|i| &line[i..]);
        out.push(Mapping {
            start,
            end,
            writable: perms.as_bytes()[1] == b'w',
            file: path.is_some(),
            exe: path.is_some_and(|p| Some(p) == exe),
            // Unknown until its Anonymous line: treat as holding private pages.
            anonymous_kb: u64::MAX,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00001000 08:01 123 /usr/bin/burrow-mio
Size:               1024 kB
Anonymous:             0 kB
55d0c0b00000-55d0c0b10000 r--p 00101000 08:01 123 /usr/bin/burrow-mio
Anonymous:            64 kB
55d0c0b10000-55d0c0b20000 rw-p 00111000 08:01 123 /usr/bin/burrow-mio
Anonymous:            12 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
7f0000200000-7f0000300000 r-xp 00000000 08:01 456                        /opt/my lib/libx.so
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_file_mappings_qualify() {
        let maps = parse(SMAPS, Some("/usr/bin/burrow-mio"));
        assert_eq!(maps.len(), 6);
        let trimmed: Vec<usize> = maps
            .iter()
            .filter(|m| !m.writable && m.file)
            .map(|m| m.start)
            .collect();
        // Text and constants (the r-- one page by page, around its private copies), and a
        // library whose path holds a space; the rest are writable or not files.
        assert_eq!(trimmed, [0x55d0c0a00000, 0x55d0c0b00000, 0x7f0000200000]);
        let whole: Vec<usize> = maps
            .iter()
            .filter(|m| m.anonymous_kb == 0 && m.file)
            .map(|m| m.start)
            .collect();
        assert_eq!(whole, [0x55d0c0a00000, 0x7f0000200000]);
        let exe: Vec<usize> = maps.iter().filter(|m| m.exe).map(|m| m.start).collect();
        assert_eq!(exe, [0x55d0c0a00000, 0x55d0c0b00000, 0x55d0c0b10000]);
    }

    #[test]
    fn trimming_this_process_keeps_it_working() {
        // A private copy in a read-only mapping, as relocated RELRO is: written, then
        // made read-only. It must survive the trim while the file's pages around it go.
        let path = std::env::temp_dir().join(format!("resident-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 4 * PAGE]).expect("file");
        let f = File::open(&path).expect("open");
        // SAFETY: a fresh private mapping of a file this test owns, unmapped below.
        let at = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
                &f,
                0,
            )
        }
        .expect("mmap");
        let bytes = at.cast::<u8>();
        // SAFETY: inside the mapping; then read-only for the rest of the test.
        unsafe {
            bytes.add(PAGE).write(42);
            for i in [0, 2, 3] {
                let _ = bytes.add(i * PAGE).read_volatile();
            }
            rustix::mm::mprotect(at, 4 * PAGE, rustix::mm::MprotectFlags::READ).expect("mprotect");
        }
        let freed = trim_file_pages();
        assert!(freed > 0, "the test binary's text is a clean file mapping");
        // SAFETY: still mapped, readable.
        let (copy, file) = unsafe { (bytes.add(PAGE).read_volatile(), bytes.read_volatile()) };
        assert_eq!(
            (copy, file),
            (42, 7),
            "the private copy kept, the file's page refilled"
        );
        // SAFETY: the mapping made above, no longer used.
        unsafe { rustix::mm::munmap(at, 4 * PAGE) }.expect("munmap");
        let _ = std::fs::remove_file(&path);
        // Code and constants fault back in.
        assert_eq!(parse(SMAPS, None).len(), 6);
    }
}
