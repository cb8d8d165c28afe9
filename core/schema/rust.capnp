# The one capnpc-rust annotation burrow uses: where the generated modules live in the crate.
# Its IDs are the ones capnpc-rust recognises; it is not compiled to Rust itself.
@0x83b3c14c3c8dd083;

annotation parentModule @0xabee386cd1450364 (file) :Text;
