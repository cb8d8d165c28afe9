//! Resident memory after start-up. Start-up touches code that never runs again (argument
//! parsing, configuration, TLS and registration): once every connection is registered, the
//! clean pages of read-only file mappings (the binary's text and rodata, libc's) are dropped
//! from this process's page tables. They stay in the page cache, shared, and fault back in
//! when the loop runs them again; what the loop uses in steady state is back within seconds.
//! Mappings holding private copies (relocated RELRO, anything written) are left alone:
//! dropping those would lose their contents.

use std::ffi::c_void;

use tracing::debug;

/// Trims start-up's pages once, when every connection has registered the first time.
#[derive(Debug, Default)]
pub struct StartupTrim {
    done: bool,
}

impl StartupTrim {
    /// Not trimmed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trims the first time `ready` registered connections reach `wanted`.
    pub fn on_ready(&mut self, ready: usize, wanted: usize) {
        if !self.done && ready >= wanted {
            self.done = true;
            trim_file_pages();
        }
    }
}

/// One mapping from /proc/self/smaps.
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    file: bool,
    /// Pages of this mapping that are private copies, not the file's (kB).
    anonymous_kb: u64,
}

/// Drops the clean pages of read-only file mappings; the bytes given back.
pub fn trim_file_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut freed = 0;
    for m in parse(&smaps) {
        if m.writable || !m.file || m.anonymous_kb != 0 {
            continue;
        }
        let len = m.end - m.start;
        // SAFETY: the range is a whole mapping of this process, read-only and file-backed
        // with no private pages, so MADV_DONTNEED only drops page-table entries that the
        // next access refills from the same file: no content is lost.
        let done = unsafe {
            rustix::mm::madvise(
                m.start as *mut c_void,
                len,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
        if done.is_ok() {
            freed += len;
        }
    }
    debug!(freed, "gave back clean file pages");
    freed
}

/// The mappings of an smaps text (unreadable lines skipped).
fn parse(smaps: &str) -> Vec<Mapping> {
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
        // offset, device, inode, then the path (absent for anonymous memory).
        let path = fields.nth(3);
        out.push(Mapping {
            start,
            end,
            writable: perms.as_bytes()[1] == b'w',
            file: path.is_some_and(|p| p.starts_with('/')),
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
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_qualify() {
        let maps = parse(SMAPS);
        assert_eq!(maps.len(), 5);
        let trimmed: Vec<usize> = maps
            .iter()
            .filter(|m| !m.writable && m.file && m.anonymous_kb == 0)
            .map(|m| m.start)
            .collect();
        // Text only: the r-- mapping holds relocated (private) pages, the rest are writable
        // or not files.
        assert_eq!(trimmed, [0x55d0c0a00000]);
    }

    #[test]
    fn trimming_this_process_keeps_it_working() {
        let freed = trim_file_pages();
        assert!(freed > 0, "the test binary's text is a clean file mapping");
        // Code and constants fault back in.
        assert_eq!(parse(SMAPS).len(), 5);
    }
}
