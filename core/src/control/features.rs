//! The features a connector advertises in `registerConnection` (cloudflared's `features`
//! package, PROTOCOL.md C§2.6). They pick the datagram version the edge speaks to us.

/// cloudflared's default feature list, with datagram v3 chosen, less `management_logs`:
/// burrow serves no management log stream, so it must not tell the edge it does.
pub const DEFAULT_FEATURES: &[&str] = &[
    "allow_remote_config",
    "serialized_headers",
    "support_datagram_v2",
    "support_quic_eof",
    "support_datagram_v3_2",
];

/// Never advertised: earlier datagram-v3 variants cloudflared retired (asking for them changes
/// nothing), and features burrow does not serve.
const NOT_ADVERTISED: &[&str] = &[
    "support_datagram_v3",
    "support_datagram_v3_1",
    "management_logs",
];

/// The defaults, `postquantum` when post-quantum key exchange is enforced, then each of `extra`
/// (`--features`) once, without [`NOT_ADVERTISED`] ones.
pub fn features(post_quantum: bool, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = DEFAULT_FEATURES.iter().map(|s| (*s).to_owned()).collect();
    if post_quantum {
        out.push("postquantum".into());
    }
    for f in extra {
        if !out.contains(f) && !NOT_ADVERTISED.contains(&f.as_str()) {
            out.push(f.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::DatagramVersion;

    #[test]
    fn defaults_choose_datagram_v3_and_extras_come_once() {
        let f = features(false, &[]);
        assert_eq!(f, DEFAULT_FEATURES);
        assert_eq!(DatagramVersion::from_features(&f), DatagramVersion::V3);
        let extra = vec![
            "support_datagram_v3_1".to_owned(),
            "serialized_headers".to_owned(),
            "custom".to_owned(),
            "custom".to_owned(),
            "management_logs".to_owned(),
        ];
        let f = features(true, &extra);
        assert_eq!(&f[DEFAULT_FEATURES.len()..], ["postquantum", "custom"]);
        assert!(
            !f.iter().any(|f| f == "management_logs"),
            "no management stream is served, so none is advertised"
        );
    }
}
