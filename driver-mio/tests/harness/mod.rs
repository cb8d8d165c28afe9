//! What burrow-mio's end-to-end test files share: the binaries under test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The burrow-mio binary under test.
pub const MIO: &str = env!("CARGO_BIN_EXE_burrow-mio");

/// burrow-tokio's `burrow` (the edge), built once per test run so it is never stale.
pub fn burrow() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-p", "burrow-tokio", "--bin", "burrow"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo build burrow");
        assert!(
            out.status.success(),
            "building burrow: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // burrow-mio's binary sits in the profile directory; burrow lands beside it.
        let bin = Path::new(MIO).with_file_name("burrow");
        assert!(bin.is_file(), "{} not found", bin.display());
        bin
    })
}
