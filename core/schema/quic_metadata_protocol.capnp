# Messages that open a QUIC data stream (edge -> connector: ConnectRequest; connector -> edge:
# ConnectResponse). Written for burrow from the facts in PROTOCOL.md §3.3; the IDs and ordinals
# match cloudflared 2026.8.2 so that the wire layout is identical.
@0xb29021ef7421cc32;

using Rust = import "rust.capnp";
$Rust.parentModule("schema");

# What kind of traffic a data stream carries.
enum ConnectionType @0xc52e1bac26d379c8 {
  http @0;
  websocket @1;
  tcp @2;
}

# One key/value pair of request or response metadata.
struct Metadata @0xe1446b97bfd1cd37 {
  key @0 :Text;
  val @1 :Text;
}

# First message on an edge-opened data stream; the request body follows it on the stream.
struct ConnectRequest @0xc47116a1045e4061 {
  dest @0 :Text;
  type @1 :ConnectionType;
  metadata @2 :List(Metadata);
}

# The connector's answer; an empty `error` means success. The response body follows it.
struct ConnectResponse @0xb1032ec91cef8727 {
  error @0 :Text;
  metadata @1 :List(Metadata);
}
