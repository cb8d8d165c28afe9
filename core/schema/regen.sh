#!/bin/sh
# Regenerates the checked-in Rust for the Cap'n Proto schemas in this directory.
# Needs `capnp` (tested with 0.9.2) and `capnpc-rust` 0.27 (`cargo install capnpc --version 0.27.0
# --locked`) on PATH; building burrow needs neither. Run from anywhere: core/schema/regen.sh
set -eu
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out=core/src/schema
capnp compile -orust:"$out" --src-prefix=core/schema \
    core/schema/quic_metadata_protocol.capnp core/schema/tunnelrpc.capnp core/schema/rpc.capnp
rustfmt --edition 2021 "$out"/quic_metadata_protocol_capnp.rs "$out"/tunnelrpc_capnp.rs "$out"/rpc_capnp.rs
