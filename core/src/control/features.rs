//! The features a connector advertises in `registerConnection` (cloudflared's `features`
//! package, PROTOCOL.md C§2.6). They pick the datagram version the edge speaks to us: the
//! `--features` flag, else Cloudflare's feature record ([`FEATURES_RECORD`]).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use thiserror::Error;

use crate::session::DatagramVersion;

/// cloudflared's default feature list less `management_logs`, which only a connector serving
/// the management log stream advertises ([`MANAGEMENT_LOGS`]). The datagram version chosen is
/// added to it.
pub const DEFAULT_FEATURES: &[&str] = &[
    "allow_remote_config",
    "serialized_headers",
    "support_datagram_v2",
    "support_quic_eof",
];

/// Advertised by a connector that serves the management log stream (burrow-mio does not).
pub const MANAGEMENT_LOGS: &str = "management_logs";

/// Never advertised: earlier datagram-v3 variants cloudflared retired (asking for them changes
/// nothing). [`MANAGEMENT_LOGS`] is not taken from `--features` either.
const NOT_ADVERTISED: &[&str] = &[
    "support_datagram_v3",
    "support_datagram_v3_1",
    MANAGEMENT_LOGS,
];

/// The feature that selects datagram v3.
const DATAGRAM_V3: &str = "support_datagram_v3_2";
/// The feature that, given without [`DATAGRAM_V3`], selects datagram v2.
const DATAGRAM_V2: &str = "support_datagram_v2";

/// DNS TXT record whose first record says which share of accounts runs datagram v3
/// (cloudflared's `featureSelectorHostname`).
pub const FEATURES_RECORD: &str = "cfd-features.argotunnel.com";

/// How often the feature record is read again (cloudflared's `defaultLookupFreq`); its
/// lookup has [`crate::tunnel::protocol::TXT_LOOKUP_TIMEOUT`], cloudflared's `lookupTimeout`.
pub const FEATURES_REFRESH: Duration = Duration::from_secs(3600);

/// The longest feature record read (Cloudflare's is a few dozen bytes; the bound keeps a hostile
/// resolver's answer from costing more than a glance).
pub const MAX_RECORD_LEN: usize = 4096;

/// The datagram version `--features` decides, as cloudflared's `datagramVersion` does:
/// `support_datagram_v3_2` → v3, else `support_datagram_v2` → v2, else none (the feature
/// record decides).
pub fn cli_datagram_version(extra: &[String]) -> Option<DatagramVersion> {
    let asked = |name: &str| extra.iter().any(|f| f == name);
    if asked(DATAGRAM_V3) {
        Some(DatagramVersion::V3)
    } else if asked(DATAGRAM_V2) {
        Some(DatagramVersion::V2)
    } else {
        None
    }
}

/// The list sent to the edge, as cloudflared's `clientFeatures`: the defaults,
/// [`MANAGEMENT_LOGS`] when `management` (the driver serves the log stream), the datagram
/// version's feature (`support_datagram_v3_2` for v3; v2's is a default), `postquantum` when
/// post-quantum key exchange is enforced, then each of `extra` (`--features`) once, without
/// `NOT_ADVERTISED` ones. `version` is [`cli_datagram_version`]'s when it has one.
pub fn features(
    post_quantum: bool,
    management: bool,
    extra: &[String],
    version: DatagramVersion,
) -> Vec<String> {
    let mut out: Vec<String> = DEFAULT_FEATURES.iter().map(|s| (*s).to_owned()).collect();
    if management {
        out.push(MANAGEMENT_LOGS.into());
    }
    if version == DatagramVersion::V3 {
        out.push(DATAGRAM_V3.into());
    }
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

/// Makes `list` (a [`features`] list `--features` left the version of to the record) select
/// `version`: adds or removes `support_datagram_v3_2`.
pub fn set_datagram_version(list: &mut Vec<String>, version: DatagramVersion) {
    let at = list.iter().position(|f| f == DATAGRAM_V3);
    match (version, at) {
        (DatagramVersion::V3, None) => {
            let after = list
                .iter()
                .position(|f| f == MANAGEMENT_LOGS)
                .or_else(|| list.iter().position(|f| f == "support_quic_eof"));
            list.insert(after.map_or(list.len(), |i| i + 1), DATAGRAM_V3.into());
        }
        (DatagramVersion::V2, Some(i)) => {
            list.remove(i);
        }
        _ => {}
    }
}

/// cloudflared's `switchThreshold`: 32-bit FNV-1a of the account tag, modulo 100. An account
/// is in a rollout of `p` percent when `p` is above it.
pub fn switch_threshold(account_tag: &str) -> u32 {
    // The fnv crate has only the 64-bit variant; 32-bit FNV-1a is these two constants.
    let hash = account_tag.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % 100
}

/// What the feature record says (cloudflared's `featuresRecord`); the default is what
/// cloudflared holds before any reading succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeaturesRecord {
    /// `dv3_2`: the share of accounts, in percent, that run datagram v3.
    pub dv3_2: u32,
    /// `skip_prechecks`: whether connectors skip their connectivity pre-checks (burrow runs
    /// none; read for completeness).
    pub skip_prechecks: bool,
}

/// A feature record that does not read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// Longer than [`MAX_RECORD_LEN`].
    #[error("the feature record is {0} bytes, more than {MAX_RECORD_LEN}")]
    TooLong(usize),
    /// Not the JSON cloudflared reads.
    #[error("the feature record is not its JSON: {0}")]
    Json(String),
}

impl FeaturesRecord {
    /// Reads the record's text as cloudflared's `json.Unmarshal` into `featuresRecord` does:
    /// a JSON object (or `null`: the defaults); keys matched case-insensitively, the last
    /// match winning; unknown keys ignored; a `null` value leaves the field as it was; any
    /// other type, a number that is no `uint32`, or trailing bytes: an error.
    pub fn parse(text: &str) -> Result<Self, RecordError> {
        if text.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLong(text.len()));
        }
        serde_json::from_str::<Wire>(text)
            .map(|w| w.0)
            .map_err(|e| RecordError::Json(e.to_string()))
    }

    /// The record as Cloudflare publishes it (the inverse of [`Self::parse`]).
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"dv3_2":{},"skip_prechecks":{}}}"#,
            self.dv3_2, self.skip_prechecks
        )
    }

    /// The datagram version this record gives `account_tag` when `--features` does not
    /// choose: v3 iff `dv3_2` is above the account's [`switch_threshold`].
    pub fn datagram_version(&self, account_tag: &str) -> DatagramVersion {
        if self.dv3_2 > switch_threshold(account_tag) {
            DatagramVersion::V3
        } else {
            DatagramVersion::V2
        }
    }
}

/// Go's `encoding/json` key match: equal under simple case folding. Beyond ASCII, only the
/// Kelvin sign and the long s fold onto letters of the two keys.
fn key_matches(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        '\u{212a}' => 'k',
        '\u{17f}' => 's',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars())
}

/// [`FeaturesRecord`] as read from JSON.
struct Wire(FeaturesRecord);

impl<'de> Deserialize<'de> for Wire {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Wire;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Wire, E> {
                Ok(Wire(FeaturesRecord::default()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire, A::Error> {
                let mut r = FeaturesRecord::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key_matches(&key, "dv3_2") {
                        if let Some(v) = map.next_value::<Option<u32>>()? {
                            r.dv3_2 = v;
                        }
                    } else if key_matches(&key, "skip_prechecks") {
                        if let Some(v) = map.next_value::<Option<bool>>()? {
                            r.skip_prechecks = v;
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Wire(r))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_and_extras_come_once() {
        let f = features(false, false, &[], DatagramVersion::V2);
        assert_eq!(f, DEFAULT_FEATURES);
        assert_eq!(DatagramVersion::from_features(&f), DatagramVersion::V2);
        let f = features(false, false, &[], DatagramVersion::V3);
        assert_eq!(&f[DEFAULT_FEATURES.len()..], ["support_datagram_v3_2"]);
        assert_eq!(DatagramVersion::from_features(&f), DatagramVersion::V3);
        let extra = strings(&[
            "support_datagram_v3_1",
            "serialized_headers",
            "custom",
            "custom",
            "management_logs",
        ]);
        let f = features(true, false, &extra, DatagramVersion::V2);
        assert_eq!(&f[DEFAULT_FEATURES.len()..], ["postquantum", "custom"]);
        assert!(
            !f.iter().any(|f| f == MANAGEMENT_LOGS),
            "no management stream is served, so none is advertised"
        );
        // cloudflared's order: its defaults (management_logs last of them), then v3's.
        let mut f = features(false, true, &extra, DatagramVersion::V3);
        assert_eq!(
            &f[DEFAULT_FEATURES.len()..],
            [MANAGEMENT_LOGS, "support_datagram_v3_2", "custom"]
        );
        set_datagram_version(&mut f, DatagramVersion::V2);
        set_datagram_version(&mut f, DatagramVersion::V3);
        assert_eq!(f[DEFAULT_FEATURES.len() + 1], "support_datagram_v3_2");
    }

    #[test]
    fn features_select_the_datagram_version_as_cloudflareds_selector() {
        let cli = |extra: &[&str]| cli_datagram_version(&strings(extra));
        assert_eq!(cli(&["support_datagram_v2"]), Some(DatagramVersion::V2));
        assert_eq!(
            cli(&["support_datagram_v2", "support_datagram_v3_2"]),
            Some(DatagramVersion::V3),
            "v3 asked for wins, as in cloudflared"
        );
        assert_eq!(cli(&["support_datagram_v3_2"]), Some(DatagramVersion::V3));
        assert_eq!(cli(&["custom", "support_datagram_v3_1"]), None);
        assert_eq!(cli(&[]), None);
        for extra in [&["support_datagram_v2"][..], &["support_datagram_v3_2"]] {
            let extra = strings(extra);
            let v = cli_datagram_version(&extra).unwrap();
            let f = features(false, false, &extra, v);
            assert_eq!(DatagramVersion::from_features(&f), v);
            assert_eq!(
                f.iter().filter(|f| *f == "support_datagram_v2").count(),
                1,
                "v2 support is always advertised, once: {f:?}"
            );
        }
    }

    #[test]
    fn set_datagram_version_toggles_only_the_v3_feature() {
        let mut f = features(true, false, &strings(&["custom"]), DatagramVersion::V2);
        let v2 = f.clone();
        set_datagram_version(&mut f, DatagramVersion::V3);
        assert_eq!(DatagramVersion::from_features(&f), DatagramVersion::V3);
        assert_eq!(
            f,
            features(true, false, &strings(&["custom"]), DatagramVersion::V3)
        );
        set_datagram_version(&mut f, DatagramVersion::V3);
        assert_eq!(f.iter().filter(|f| *f == DATAGRAM_V3).count(), 1);
        set_datagram_version(&mut f, DatagramVersion::V2);
        assert_eq!(f, v2);
    }

    #[test]
    fn threshold_is_fnv1a32_mod_100() {
        // FNV-1a 32 test vectors (Fowler/Noll/Vo's, also Go's hash/fnv tests): "" is the
        // offset basis 0x811c9dc5, "a" 0xe40c292c, "foobar" 0xbf9cf968.
        assert_eq!(switch_threshold(""), 0x811c_9dc5 % 100);
        assert_eq!(switch_threshold("a"), 0xe40c_292c % 100);
        assert_eq!(switch_threshold("foobar"), 0xbf9c_f968 % 100);
        assert_eq!(switch_threshold("a"), 20);
    }

    #[test]
    fn the_record_gives_v3_to_accounts_below_its_share() {
        let tag = "a"; // threshold 20
        let rec = |dv3_2| FeaturesRecord {
            dv3_2,
            skip_prechecks: false,
        };
        assert_eq!(rec(21).datagram_version(tag), DatagramVersion::V3);
        assert_eq!(rec(100).datagram_version(tag), DatagramVersion::V3);
        assert_eq!(
            rec(20).datagram_version(tag),
            DatagramVersion::V2,
            "strictly above"
        );
        assert_eq!(rec(0).datagram_version(tag), DatagramVersion::V2);
        assert_eq!(
            FeaturesRecord::default().datagram_version(tag),
            DatagramVersion::V2,
            "nothing read: v2, as cloudflared"
        );
    }

    #[test]
    fn the_record_reads_as_gos_json_unmarshal() {
        let ok = |t: &str| FeaturesRecord::parse(t).unwrap();
        assert_eq!(
            ok(r#"{"dv3_2": 50, "skip_prechecks": true}"#),
            FeaturesRecord {
                dv3_2: 50,
                skip_prechecks: true
            }
        );
        // Unknown keys (the retired `dv3`, `dv3_1`, `pq`) are ignored; missing keys default.
        assert_eq!(
            ok(r#"{"dv3":100,"dv3_1":100,"pq":{"x":[1]}}"#),
            FeaturesRecord::default()
        );
        assert_eq!(ok("{}"), FeaturesRecord::default());
        assert_eq!(ok("null"), FeaturesRecord::default());
        assert_eq!(ok(r#"{"dv3_2":null}"#), FeaturesRecord::default());
        // Keys match case-insensitively; the last match wins.
        assert_eq!(ok(r#"{"DV3_2":7,"dv3_2":9}"#).dv3_2, 9);
        assert_eq!(ok(r#"{"dv3_2":9,"Dv3_2":7}"#).dv3_2, 7);
        assert!(ok("{\"\u{17f}kip_prechecks\":true}").skip_prechecks);
        assert_eq!(ok(&format!("{{\"dv3_2\":{}}}", u32::MAX)).dv3_2, u32::MAX);
        for bad in [
            "",
            "{",
            "[]",
            "50",
            r#""x""#,
            r#"{"dv3_2":-1}"#,
            r#"{"dv3_2":1.5}"#,
            r#"{"dv3_2":"50"}"#,
            r#"{"dv3_2":4294967296}"#,
            r#"{"skip_prechecks":1}"#,
            r#"{"dv3_2":5} x"#,
        ] {
            assert!(FeaturesRecord::parse(bad).is_err(), "{bad:?} reads");
        }
        let long = format!(r#"{{"dv3_2":1,"x":"{}"}}"#, "a".repeat(MAX_RECORD_LEN));
        assert_eq!(
            FeaturesRecord::parse(&long),
            Err(RecordError::TooLong(long.len()))
        );
    }

    proptest! {
        #[test]
        fn record_round_trips(dv3_2 in any::<u32>(), skip in any::<bool>(), junk in "[a-z_]{0,8}") {
            let r = FeaturesRecord { dv3_2, skip_prechecks: skip };
            prop_assert_eq!(FeaturesRecord::parse(&r.to_json()), Ok(r));
            // With an unknown key in front and the keys in other case, the same record.
            let text = format!(
                r#"{{"x{junk}":[{{"{junk}":1}}],"DV3_2":{dv3_2},"Skip_Prechecks":{skip}}}"#
            );
            prop_assert_eq!(FeaturesRecord::parse(&text), Ok(r));
        }

        #[test]
        fn any_text_reads_or_fails_without_panic(text in ".{0,64}") {
            let _ = FeaturesRecord::parse(&text);
        }
    }
}
