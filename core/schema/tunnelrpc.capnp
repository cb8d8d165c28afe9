# The tunnel RPC interfaces spoken on the QUIC control stream and on RPC streams. Written for
# burrow from the facts in PROTOCOL.md §2.4; only what the QUIC path uses is declared. Struct and
# interface IDs and field ordinals match cloudflared 2026.8.2, so the layouts are identical.
#
# Method parameter and result structs are implicit (capnp has no syntax for an ID on an inline
# parameter list); their IDs derive from the interface ID and method ordinal and therefore equal
# cloudflared's (checked with `capnp compile -ocapnp`). They never appear on the wire.
@0xdb8274f9144abc7e;

using Rust = import "rust.capnp";
$Rust.parentModule("schema");

# Credentials that prove the connector may serve the tunnel.
struct TunnelAuth @0x9496331ab9cd463f {
  accountTag @0 :Text;
  tunnelSecret @1 :Data;
}

# Who is connecting: connector instance, advertised features, build.
struct ClientInfo @0x83ced0145b2f114b {
  clientId @0 :Data;
  features @1 :List(Text);
  version @2 :Text;
  arch @3 :Text;
}

# Per-connection options sent with registerConnection.
struct ConnectionOptions @0xb4bf9861fe035d04 {
  client @0 :ClientInfo;
  originLocalIp @1 :Data;
  replaceExisting @2 :Bool;
  compressionQuality @3 :UInt8;
  numPreviousAttempts @4 :UInt8;
}

# Outcome of registerConnection.
struct ConnectionResponse @0xdbaa9d03d52b62dc {
  result :union {
    error @0 :ConnectionError;
    connectionDetails @1 :ConnectionDetails;
  }
}

# Why the edge refused a registration, and whether to retry (retryAfter is in nanoseconds).
struct ConnectionError @0xf5f383d2785edb86 {
  cause @0 :Text;
  retryAfter @1 :Int64;
  shouldRetry @2 :Bool;
}

# What the edge says about an accepted connection.
struct ConnectionDetails @0xb5f39f082b9ac18a {
  uuid @0 :Data;
  locationName @1 :Text;
  tunnelIsRemotelyManaged @2 :Bool;
}

# Outcome of registerUdpSession; spans are OTLP protobuf bytes.
struct RegisterUdpSessionResponse @0xab6d5210c1f26687 {
  err @0 :Text;
  spans @1 :Data;
}

# Outcome of updateConfiguration.
struct UpdateConfigurationResponse @0xdb58ff694ba05cf9 {
  latestAppliedVersion @0 :Int32;
  err @1 :Text;
}

# Served by the edge on the control stream; the connector bootstraps it.
interface RegistrationServer @0xf71695ec7fe85497 {
  registerConnection @0 (auth :TunnelAuth, tunnelId :Data, connIndex :UInt8,
                         options :ConnectionOptions) -> (result :ConnectionResponse);
  unregisterConnection @1 () -> ();
  updateLocalConfiguration @2 (config :Data) -> ();
}

# Datagram v2 UDP sessions (closeAfterIdleHint is in nanoseconds).
interface SessionManager @0x839445a59fb01686 {
  registerUdpSession @0 (sessionId :Data, dstIp :Data, dstPort :UInt16,
                         closeAfterIdleHint :Int64, traceContext :Text = "")
      -> (result :RegisterUdpSessionResponse);
  unregisterUdpSession @1 (sessionId :Data, message :Text) -> ();
}

# Remote configuration pushed by the edge (config is JSON).
interface ConfigurationManager @0xb48edfbdaa25db04 {
  updateConfiguration @0 (version :Int32, config :Data) -> (result :UpdateConfigurationResponse);
}

# What the connector serves on edge-opened RPC streams.
interface CloudflaredServer @0xf548cef9dea2a4a1 extends(SessionManager, ConfigurationManager) {}
