//! burrow-mio: the single-threaded driver for embedded boxes.
//!
//! The event loop lands with the tunnel core (issue 3); until then this binary only reports what
//! it is, so the workspace shape is in place.

fn main() {
    eprintln!(
        "burrow-mio {}: the embedded event loop is not built yet; use `burrow` (burrow-tokio)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
