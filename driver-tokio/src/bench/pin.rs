//! `--pin`: the connector alone on one CPU, everything else on the other, so a throughput
//! figure measures the connector rather than whoever wins the shared cores.

use std::io;

/// The CPU the connector gets; everything else gets the CPUs below it.
pub const CONNECTOR_CPU: usize = 1;

fn set(tid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins the calling thread (and so every thread and child process it starts later: the
/// origins, the clients and the edge) to CPU 0.
pub fn rest_on_cpu0() -> io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= CONNECTOR_CPU {
        return Err(io::Error::other(format!(
            "--pin needs at least {} CPUs, this process may use {cores}",
            CONNECTOR_CPU + 1
        )));
    }
    set(0, &[0])
}

/// Moves every thread of process `pid` to [`CONNECTOR_CPU`]. Threads it starts later inherit
/// the mask from the thread that starts them.
pub fn connector(pid: u32) -> io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: libc::pid_t = task?
            .file_name()
            .to_string_lossy()
            .parse()
            .map_err(|_| io::Error::other("a /proc task name that is not a thread id"))?;
        set(tid, &[CONNECTOR_CPU])?;
    }
    Ok(())
}

/// Time CPUs 0 and 1 spent busy, and in all, in clock ticks (`/proc/stat`): under `--pin`,
/// whether a figure was bound by the connector's CPU or by everyone else's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    busy: [u64; 2],
    total: [u64; 2],
}

impl CpuTicks {
    /// The counters now; `None` where `/proc/stat` is unreadable.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut t = Self::default();
        for (cpu, name) in ["cpu0", "cpu1"].into_iter().enumerate() {
            let line = stat
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))?;
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            let idle = f.get(3)? + f.get(4).unwrap_or(&0);
            t.total[cpu] = f.iter().take(8).sum();
            t.busy[cpu] = t.total[cpu].saturating_sub(idle);
        }
        Some(t)
    }

    /// What happened between `earlier` and these counters.
    pub fn since(&self, earlier: &Self) -> Self {
        let d = |a: [u64; 2], b: [u64; 2]| [a[0].saturating_sub(b[0]), a[1].saturating_sub(b[1])];
        Self {
            busy: d(self.busy, earlier.busy),
            total: d(self.total, earlier.total),
        }
    }

    /// Both spans together.
    pub fn plus(&self, other: &Self) -> Self {
        let s = |a: [u64; 2], b: [u64; 2]| [a[0] + b[0], a[1] + b[1]];
        Self {
            busy: s(self.busy, other.busy),
            total: s(self.total, other.total),
        }
    }

    /// Percent of the span CPU `cpu` (0 or 1) was busy; `None` for an empty span.
    pub fn busy_percent(&self, cpu: usize) -> Option<f64> {
        let total = *self.total.get(cpu)?;
        (total > 0).then(|| self.busy[cpu] as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_shares_come_from_the_ticks_between_two_readings() {
        let a = CpuTicks {
            busy: [100, 50],
            total: [200, 200],
        };
        let b = CpuTicks {
            busy: [190, 75],
            total: [300, 300],
        };
        let span = b.since(&a);
        assert_eq!(span.busy_percent(0), Some(90.0));
        assert_eq!(span.busy_percent(1), Some(25.0));
        let both = span.plus(&span);
        assert_eq!(both.busy_percent(0), Some(90.0));
        assert_eq!(CpuTicks::default().busy_percent(0), None, "an empty span");
        assert_eq!(span.busy_percent(2), None, "only CPUs 0 and 1");
        // A machine with one CPU has no cpu1 line.
        if let Some(now) = CpuTicks::now() {
            assert!(now.total[0] >= now.busy[0] && now.total[1] >= now.busy[1]);
        }
    }
}
