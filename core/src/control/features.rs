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

/// The feature that selects datagram v3.
const DATAGRAM_V3: &str = "support_datagram_v3_2";
/// The feature that, given without [`DATAGRAM_V3`], selects datagram v2.
const DATAGRAM_V2: &str = "support_datagram_v2";

/// The defaults, `postquantum` when post-quantum key exchange is enforced, then each of `extra`
/// (`--features`) once, without [`NOT_ADVERTISED`] ones.
///
/// The datagram version is chosen as cloudflared's `features/selector.go` does:
/// `support_datagram_v3_2` in `--features` selects v3; else `support_datagram_v2` selects v2
/// (the list then lacks `support_datagram_v3_2`, so the edge speaks v2 to this connector);
/// else cloudflared asks Cloudflare's DNS, where burrow takes v3.
pub fn features(post_quantum: bool, extra: &[String]) -> Vec<String> {
    let asked = |name: &str| extra.iter().any(|f| f == name);
    let v2 = asked(DATAGRAM_V2) && !asked(DATAGRAM_V3);
    let mut out: Vec<String> = DEFAULT_FEATURES
        .iter()
        .filter(|f| !(v2 && **f == DATAGRAM_V3))
        .map(|s| (*s).to_owned())
        .collect();
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

    #[test]
    fn features_select_the_datagram_version_as_cloudflareds_selector() {
        let v = |extra: &[&str]| {
            let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
            let f = features(false, &extra);
            assert_eq!(
                f.iter().filter(|f| *f == "support_datagram_v2").count(),
                1,
                "v2 support is always advertised, once: {f:?}"
            );
            DatagramVersion::from_features(&f)
        };
        assert_eq!(v(&["support_datagram_v2"]), DatagramVersion::V2);
        assert_eq!(
            v(&["support_datagram_v2", "support_datagram_v3_2"]),
            DatagramVersion::V3,
            "v3 asked for wins, as in cloudflared"
        );
        assert_eq!(v(&["support_datagram_v3_2"]), DatagramVersion::V3);
        assert_eq!(v(&["custom"]), DatagramVersion::V3);
        assert_eq!(
            features(false, &["support_datagram_v2".to_owned()]),
            [
                "allow_remote_config",
                "serialized_headers",
                "support_datagram_v2",
                "support_quic_eof"
            ]
        );
    }
}
