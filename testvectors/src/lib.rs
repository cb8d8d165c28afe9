//! The vectors in `vectors/` were produced by cloudflared 2026.8.2's own encoders and decoders
//! (provenance: `vectors/README.md`, copied unedited from the project's shared reference). This
//! crate embeds them and offers a typed view for the tests in `tests/`.

use serde::Deserialize;

/// One vector file: where it came from and its cases.
#[derive(Debug, Deserialize)]
pub struct VectorFile {
    /// Provenance line, kept verbatim.
    pub source: String,
    /// The cases, in file order.
    pub vectors: Vec<Vector>,
}

/// One case: a name, a kind, expected fields, the bytes and (for decode-behaviour files) the result.
#[derive(Debug, Deserialize)]
pub struct Vector {
    /// Unique name within the file.
    pub name: String,
    /// What the bytes are, e.g. `v3.registration`.
    pub kind: String,
    /// Decoded form; shape depends on `kind`.
    #[serde(default)]
    pub fields: serde_json::Value,
    /// Lowercase hex of the encoded bytes (absent for some kinds).
    #[serde(default)]
    pub hex: Option<String>,
    /// What cloudflared did with the bytes (decode-behaviour files only).
    #[serde(default)]
    pub result: Option<String>,
}

impl Vector {
    /// The vector's bytes (empty when the vector has no `hex`).
    pub fn bytes(&self) -> Vec<u8> {
        self.hex
            .as_deref()
            .map(|h| hex::decode(h).unwrap_or_else(|e| panic!("{}: bad hex: {e}", self.name)))
            .unwrap_or_default()
    }

    /// A string field, panicking with the vector's name if it is missing (test-only helper).
    pub fn str_field(&self, key: &str) -> &str {
        self.fields[key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: field {key} missing or not a string", self.name))
    }

    /// An integer field, panicking with the vector's name if it is missing (test-only helper).
    pub fn u64_field(&self, key: &str) -> u64 {
        self.fields[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: field {key} missing or not an integer", self.name))
    }
}

macro_rules! vector_file {
    ($(#[$doc:meta])* $fn:ident, $file:literal) => {
        $(#[$doc])*
        pub fn $fn() -> VectorFile {
            serde_json::from_str(include_str!(concat!("../vectors/", $file)))
                .expect(concat!($file, " parses"))
        }
    };
}

vector_file!(
    /// `v3_datagrams.json`: datagram v3 encode/decode cases.
    v3_datagrams,
    "v3_datagrams.json"
);
vector_file!(
    /// `v3_decode_cloudflared_behaviour.json`: malformed v3 inputs and what cloudflared did.
    v3_decode_behaviour,
    "v3_decode_cloudflared_behaviour.json"
);
vector_file!(
    /// `v2_datagrams.json`: legacy suffix-typed datagrams.
    v2_datagrams,
    "v2_datagrams.json"
);
vector_file!(
    /// `connect_stream.json`: data-stream preamble + ConnectRequest/ConnectResponse.
    connect_stream,
    "connect_stream.json"
);
vector_file!(
    /// `control_stream.json`: a whole control-stream RPC conversation.
    control_stream,
    "control_stream.json"
);
vector_file!(
    /// `icmp.json`: ICMP echo encodings and TTL-exceeded replies.
    icmp,
    "icmp.json"
);

/// Every vector file, for tests that sweep them all (e.g. "no decoder panics on any vector").
pub fn all() -> Vec<(&'static str, VectorFile)> {
    vec![
        ("v3_datagrams.json", v3_datagrams()),
        (
            "v3_decode_cloudflared_behaviour.json",
            v3_decode_behaviour(),
        ),
        ("v2_datagrams.json", v2_datagrams()),
        ("connect_stream.json", connect_stream()),
        ("control_stream.json", control_stream()),
        ("icmp.json", icmp()),
    ]
}
