//! What the connector tells about the machine it runs on: its seed, its name and the address
//! it reaches the outside from (the management service's `/host_details`).

use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Fresh OS randomness for a seed.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failing OS RNG leaves zeros: jitter is then merely predictable, nothing breaks.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// The machine's host name, "unknown" if it cannot be read, as Go's `os.Hostname` failing
/// gives cloudflared.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The local address of a UDP socket connected to `to` (no packet is sent): the address the
/// connector reaches the outside from, as cloudflared's dial to `--service-op-ip` finds it.
pub fn own_address(to: &str) -> Option<IpAddr> {
    let to: SocketAddr = to.parse().ok()?;
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(to).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_to_loopback_starts_at_loopback_and_names_are_refused() {
        assert_eq!(
            own_address("127.0.0.1:443"),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(own_address("example.com:443"), None);
        assert!(!host_name().is_empty());
    }
}
