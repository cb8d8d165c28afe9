//! Cap'n Proto RPC messages on the control and RPC streams (placeholder until it lands).
