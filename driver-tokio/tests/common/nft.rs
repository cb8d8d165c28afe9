//! nftables rules for tests that need a blocked path (as root, with `nft`); each is removed
//! when dropped.

use std::process::Command;

/// An nftables table dropping UDP to one port on output; removed on drop.
pub struct DropUdp(String);

impl DropUdp {
    /// Drops UDP to `port`; `None` without root or `nft` (the caller skips).
    pub fn to_port(port: u16) -> Option<Self> {
        // One table per process and port: tests running at once do not share rules.
        let table = format!("burrow_drop_udp_{}_{port}", std::process::id());
        let nft = |args: &str| {
            Command::new("nft")
                .args(args.split(' '))
                .status()
                .is_ok_and(|s| s.success())
        };
        let ok = nft(&format!("add table inet {table}"))
            && nft(&format!(
                "add chain inet {table} out {{ type filter hook output priority 0 ; }}"
            ))
            && nft(&format!("add rule inet {table} out udp dport {port} drop"));
        let rule = DropUdp(table);
        ok.then_some(rule)
    }
}

impl Drop for DropUdp {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}
