//! An origin name that resolves to `::1` first and `127.0.0.1` second, as `localhost` does on
//! most systems (cloudflared's default `--url` is `http://localhost:8080`), for a connector
//! started in a mount namespace of its own whose `/etc/hosts` says so: nothing outside it
//! changes. An origin listening on 127.0.0.1 alone refuses the first address; a dialer that
//! tries only the first answer fails where cloudflared's (Go's, every address) does not.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The name the wrapped connector resolves to `::1`, then `127.0.0.1`.
pub const NAME: &str = "dual.burrow.test";

/// Writes the hosts file and a wrapper script into `dir` that runs `bin` (its arguments
/// passed on) in a new mount namespace with that hosts file bound over `/etc/hosts`. None,
/// said on stderr, where this machine cannot (not root, no `unshare`, no IPv6 loopback).
pub fn wrapper(dir: &Path, bin: &Path) -> Option<PathBuf> {
    wrapper_naming_edge(dir, bin, false)
}

/// [`wrapper`], and with `edge_by_name` the value of `--edge` (`127.0.0.1:PORT`, the
/// testbed's) becomes [`NAME`]`:PORT`.
pub fn wrapper_naming_edge(dir: &Path, bin: &Path, edge_by_name: bool) -> Option<PathBuf> {
    let can = Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount --bind /dev/null /etc/hostname",
        ])
        .status()
        .is_ok_and(|s| s.success())
        && std::net::TcpListener::bind("[::1]:0").is_ok();
    if !can {
        eprintln!("skipped: needs root, unshare and an IPv6 loopback");
        return None;
    }
    let hosts = dir.join("hosts.dual");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n::1 {NAME}\n127.0.0.1 {NAME}\n"),
    )
    .expect("hosts");
    let script = dir.join(format!("in-dual-stack-namespace-{edge_by_name}.sh"));
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
