//! Helpers the end-to-end tests share. Each test binary uses a different part of them.
#![allow(dead_code)]

pub mod access;
pub mod access_jwt;
pub mod body;
pub mod client;
pub mod dual_stack;
pub mod h2_origin;
pub mod management;
pub mod nft;
pub mod origin_tls;
pub mod origins;
pub mod ping;
pub mod quic;
pub mod stalled;
