//! burrow-mio links as a position-dependent executable (`-no-pie`), as cloudflared's own
//! Linux binary is (Go's default). A position-independent one carries a relocation for every
//! pointer in its constant tables (vtables, string slices): 460 KB of `.rela.dyn`, read at
//! every start, and 336 KB of relocated `.data.rel.ro` that became private memory in every
//! process. Without them the small build is 460 KB smaller and its idle RSS about 300 kB
//! lower (README, burrow-mio). The cost: the executable's own code and constants load at a
//! fixed address (libraries, heap and stack are still randomised). Statically linked builds
//! (`crt-static`, e.g. musl) keep rustc's choice: `-no-pie` would contradict its `-static-pie`.

fn main() {
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let static_crt = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|features| features.split(',').any(|f| f == "crt-static"));
    if linux && !static_crt {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
