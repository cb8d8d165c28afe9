//! A name with several addresses, such as one that resolves to `::1` first and `127.0.0.1`
//! second as `localhost` does on most systems (cloudflared's default `--url` is
//! `http://localhost:8080`), for a connector started in a mount namespace of its own whose
//! `/etc/hosts` says so: nothing outside it changes. An origin listening on 127.0.0.1 alone
//! refuses the first address, a [`Blackhole`] drops its SYNs; a dialer that tries only the
//! first answer, or waits on it, fails where cloudflared's (Go's) does not.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The name the wrapped connector resolves to the addresses it was given.
pub const NAME: &str = "dual.burrow.test";

/// Writes a hosts file ([`NAME`] resolving to `addrs` in that order) and a wrapper script
/// into `dir` that runs `bin` (its arguments passed on) in a new mount namespace with that
/// hosts file bound over `/etc/hosts`; with `edge_by_name` the value of `--edge`
/// (`127.0.0.1:PORT`, the testbed's) becomes [`NAME`]`:PORT`. None, said on stderr, where
/// this machine cannot (not root, no `unshare`, no IPv6 loopback).
pub fn wrapper_resolving(
    dir: &Path,
    bin: &Path,
    addrs: &[&str],
    edge_by_name: bool,
) -> Option<PathBuf> {
    let can = can_unshare() && std::net::TcpListener::bind("[::1]:0").is_ok();
    if !can {
        eprintln!("skipped: needs root, unshare and an IPv6 loopback");
        return None;
    }
    let tag = addrs.join("-").replace(':', "");
    let hosts = dir.join(format!("hosts.{tag}"));
    let lines: String = addrs.iter().map(|a| format!("{a} {NAME}\n")).collect();
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{lines}")).expect("hosts");
    let script = dir.join(format!("in-namespace-{tag}-{edge_by_name}.sh"));
    // Rewrites the argument after `--edge` to the name, keeping its port.
    let rename = if edge_by_name {
        format!(
            "prev=\nfor a in \"$@\"; do\n  shift\n  [ \"$prev\" = --edge ] && a=\"{NAME}:${{a##*:}}\"\n  set -- \"$@\" \"$a\"\n  prev=$a\ndone\n"
        )
    } else {
        String::new()
    };
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{rename}exec unshare --mount sh -c 'mount --bind \"$0\" /etc/hosts && exec \"$@\"' '{}' '{}' \"$@\"\n",
            hosts.display(),
            bin.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Some(script)
}

/// Whether this machine can run a program in a mount namespace of its own with a file bound
/// over one of /etc's (root and `unshare`).
pub fn can_unshare() -> bool {
    Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount --bind /dev/null /etc/hostname",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// An address dropping every SYN, as a firewalled or dead one does: a listener there whose
/// accept queue (of one) is full and never accepted from. It lasts as long as this.
pub struct Blackhole {
    _listener: socket2::Socket,
    _filler: std::net::TcpStream,
}

/// A [`Blackhole`] at `addr`; None, said on stderr, where the kernel does not drop SYNs past
/// a full accept queue.
pub fn blackhole(addr: std::net::SocketAddr) -> Option<Blackhole> {
    use socket2::{Domain, Socket, Type};
    use std::time::Duration;
    let l = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    if addr.is_ipv6() {
        l.set_only_v6(true).expect("v6 only");
    }
    l.bind(&addr.into()).expect("bind the blackhole");
    l.listen(0).expect("listen");
    let filler = std::net::TcpStream::connect(addr).expect("fill the accept queue");
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    match probe.connect_timeout(&addr.into(), Duration::from_millis(500)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Some(Blackhole {
            _listener: l,
            _filler: filler,
        }),
        r => {
            eprintln!("skipped: {addr} answers past a full accept queue ({r:?})");
            None
        }
    }
}
