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
