#![no_main]
//! Any TXT text as Cloudflare's feature record (`cfd-features.argotunnel.com`): it reads or
//! fails without panic, and what reads re-encodes to the same record.

use burrow_core::control::features::FeaturesRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(record) = FeaturesRecord::parse(text) {
        assert_eq!(FeaturesRecord::parse(&record.to_json()), Ok(record));
        let _ = record.datagram_version(text);
    }
});
