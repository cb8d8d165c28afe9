//! Handing freed heap back to the kernel after a burst, not during one. glibc's malloc keeps
//! what is freed inside its arenas and returns only the top of a heap by itself: after a burst
//! of transfers a connector held about 19 MiB it no longer used (36.5 MiB resident, 17.4 MiB
//! after a `malloc_trim`). Drivers call [`HeapTrim::tick`] about once a second. And during a
//! burst glibc returned too much: a stream's buffers (hyper's reads of up to 408 KiB, handed
//! to quinn and freed once acknowledged) were trimmed off the top of the heap as they were
//! freed, or mapped and unmapped one by one, and faulted in again by the next read (3.4 % of
//! an edge's CPU in page faults under an upload, all in the kernel's copy into hyper's buffer).

/// Free heap, resident and not in use, worth a trim: below it a trim is not worth its walk
/// over the arenas.
pub const MIN_RELEASE: u64 = 4 << 20;

/// Freed heap glibc may keep on top of a heap before it trims by itself: a burst's working
/// set, which [`HeapTrim::tick`] returns once the burst is over.
pub const TRIM_THRESHOLD: i32 = 8 << 20;
/// Blocks from this size up are mapped and unmapped on their own; below, they come from the
/// arenas (glibc starts at 128 KiB).
pub const MMAP_THRESHOLD: i32 = 4 << 20;

/// Keeps a burst's freed buffers in the arenas for the next read ([`TRIM_THRESHOLD`],
/// [`MMAP_THRESHOLD`]) instead of trimming them as they are freed; [`HeapTrim::tick`] still
/// returns them once the burst is over. Once per process, beside its [`HeapTrim`].
pub fn hold_bursts() {
    imp::hold_bursts();
}

/// Decides when to trim the allocator's arenas; one per process.
#[derive(Debug, Default)]
pub struct HeapTrim {
    /// Resident-but-unused bytes a trim could not return last time (pages shared by freed and
    /// live blocks): only growth beyond it is worth another trim.
    residue: u64,
}

impl HeapTrim {
    /// Nothing trimmed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trims when at least [`MIN_RELEASE`] more bytes are resident but not in use than the last
    /// trim left, and more of the heap is free than in use (so not in the middle of a burst,
    /// whose buffers would only be faulted in again). Returns the bytes that stopped being
    /// resident; `None` when it did not trim (or with an allocator other than glibc's).
    pub fn tick(&mut self) -> Option<u64> {
        imp::release_idle_heap(&mut self.residue)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::MIN_RELEASE;

    /// Resident anonymous memory of this process (resident minus file-backed), in bytes.
    fn anon_resident() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let mut f = statm
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse::<u64>().ok());
        let (resident, shared) = (f.next()??, f.next()??);
        // SAFETY: sysconf only reads a system constant.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        Some(resident.saturating_sub(shared) * page)
    }

    /// Bytes malloc has handed out, and free bytes in its arenas.
    fn allocated() -> (u64, u64) {
        // `mallinfo`, not `mallinfo2`: the latter needs glibc 2.33, which would raise the
        // oldest system the daemon runs on. Its int fields are read as u32 (right up to 4 GiB).
        // SAFETY: mallinfo only reads the allocator's statistics.
        #[allow(deprecated)]
        let info = unsafe { libc::mallinfo() };
        let in_use = u64::from(info.uordblks as u32) + u64::from(info.hblkhd as u32);
        (in_use, u64::from(info.fordblks as u32))
    }

    pub fn hold_bursts() {
        use super::{MMAP_THRESHOLD, TRIM_THRESHOLD};
        // SAFETY: mallopt only sets the allocator's parameters; both values are in range
        // (the mmap threshold's ceiling is 32 MiB on 64-bit).
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }

    pub fn release_idle_heap(residue: &mut u64) -> Option<u64> {
        // The allocator's own figures first: an idle connector stops here every second,
        // without opening, reading and parsing a /proc file (code it would otherwise keep
        // resident for that alone).
        let (in_use, free) = allocated();
        if free < MIN_RELEASE || free < in_use {
            return None;
        }
        let before = anon_resident()?;
        // Resident beyond what malloc hands out: freed chunks not yet returned (plus thread
        // stacks and the allocator's own books, which the threshold absorbs).
        let idle = before.saturating_sub(in_use);
        if idle < *residue + MIN_RELEASE {
            return None;
        }
        // SAFETY: malloc_trim only returns free pages of the arenas to the kernel.
        unsafe { libc::malloc_trim(0) };
        let after = anon_resident()?;
        *residue = after.saturating_sub(allocated().0);
        Some(before.saturating_sub(after))
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn hold_bursts() {}

    pub fn release_idle_heap(_: &mut u64) -> Option<u64> {
        None
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    // Reads glibc's chunk header: only where `hold_bursts` does something.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_streams_buffer_comes_from_the_arena_not_a_mapping_of_its_own() {
        hold_bursts();
        // 2 MiB: above glibc's initial mmap threshold, below ours.
        let block = vec![1u8; 2 << 20];
        // SAFETY: glibc keeps each block's size word, with its IS_MMAPPED bit (2), in the
        // machine word before the block, which the allocation owns.
        let size_word = unsafe { *(block.as_ptr() as *const usize).sub(1) };
        assert_eq!(size_word & 2, 0, "a 2 MiB block was mapped on its own");
    }

    #[test]
    fn a_fragmented_burst_is_released() {
        // 64 MiB in 4 KiB blocks (below the mmap threshold, so inside an arena), touched; one
        // block in 16 kept, so what is freed is holes glibc cannot return by itself.
        let mut blocks: Vec<Vec<u8>> = (0..16384).map(|i| vec![i as u8; 4096]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(16).map(std::mem::take).collect();
        drop(blocks);
        let mut trim = HeapTrim::new();
        let released = trim.tick().expect("60 MiB free in holes is worth a trim");
        assert!(released >= 32 << 20, "released only {released} bytes");
        assert_eq!(trim.tick(), None, "nothing left worth a second trim");
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 16) as u8));
    }
}
