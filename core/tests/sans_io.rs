//! Core is sans-IO: no sockets, files, clocks, threads, environment or locks in its library
//! code (its tests may use them). This reads core's sources and names any line that does, so
//! a driver's job cannot creep back into core unnoticed.

use std::path::Path;

/// What only a driver may call or hold.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::thread",
    "std::process",
    "std::env::var",
    "Instant::now",
    "SystemTime::now",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "Mutex",
    "RwLock",
    "Atomic",
    "tokio::spawn",
    "tokio::runtime",
];

/// What core keeps of them, each with its reason in the file: one lock (h2 owns its I/O
/// object by value) and one atomic flag (quinn owns the congestion controller and lends it
/// only by shared reference).
const ALLOWED: &[(&str, &str)] = &[("http2/pipe.rs", "Mutex"), ("quic/ack_probe.rs", "Atomic")];

#[test]
fn core_library_code_does_no_io_and_holds_no_locks() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    visit(&src, &src, &mut found);
    assert!(
        found.is_empty(),
        "I/O or locks in core:\n{}",
        found.join("\n")
    );
}

fn visit(root: &Path, dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("core/src is readable") {
        let path = entry.expect("directory entry").path();
        let rel = path
            .strip_prefix(root)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            visit(root, &path, found);
        } else if rel.ends_with(".rs") && !rel.ends_with("tests.rs") {
            let text = std::fs::read_to_string(&path).expect("source is UTF-8");
            scan(&rel, &text, found);
        }
    }
}

/// Scans `text` up to its test module (`#[cfg(test)]` then `mod`), comments left out.
fn scan(rel: &str, text: &str, found: &mut Vec<String>) {
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let code = line.trim_start();
        if code == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|(_, next)| next.trim_start().starts_with("mod "))
        {
            return;
        }
        if code.starts_with("//") {
            continue;
        }
        for word in FORBIDDEN {
            if code.contains(word) && !ALLOWED.contains(&(rel, word)) {
                found.push(format!("{rel}:{}: {word}: {}", n + 1, code));
            }
        }
    }
}

#[test]
fn the_scan_finds_what_it_looks_for() {
    let mut found = Vec::new();
    scan(
        "x.rs",
        "// std::fs in a comment\nlet t = Instant::now();\n#[cfg(test)]\nmod tests {\n    std::fs::read(\"\");\n}\n",
        &mut found,
    );
    assert_eq!(found, ["x.rs:2: Instant::now: let t = Instant::now();"]);
}
