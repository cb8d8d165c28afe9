#![no_main]
//! Any text as `config.yml`, any bytes as a configuration the edge pushes
//! (`UpdateConfiguration`): parsing and building the ingress rules fail with an error, never
//! a panic.

use burrow_core::ingress::{ConfigFile, RemoteConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            if let Ok(file) = ConfigFile::from_yaml(text) {
                let _ = file.ingress();
            }
        }
    } else {
        let _ = RemoteConfig::from_json(rest);
    }
});
