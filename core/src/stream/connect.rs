//! ConnectRequest / ConnectResponse (placeholder until the capnp codecs land).
