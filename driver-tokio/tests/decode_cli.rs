//! `burrow decode` as users run it: the real binary, arguments and stdin, JSON Lines out.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use burrow_testvectors::{connect_stream, icmp, v2_datagrams, v3_datagrams};
use proptest::prelude::*;
use serde_json::Value;

fn burrow(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn burrow");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("burrow runs")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .expect("utf-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn v3_vectors_print_the_vector_field_names_and_values() {
    let file = v3_datagrams();
    let hexes: Vec<&str> = file
        .vectors
        .iter()
        .map(|v| v.hex.as_deref().unwrap())
        .collect();
    let out = burrow(&[&["decode", "v3"], &hexes[..]].concat(), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), file.vectors.len());
    for (v, got) in file.vectors.iter().zip(&lines) {
        let want_type = v.kind.strip_prefix("v3.").unwrap();
        assert_eq!(got["type"], want_type, "{}", v.name);
        // Every field the vector lists is printed under the same name with the same value.
        for (key, want) in v.fields.as_object().unwrap() {
            assert_eq!(&got[key], want, "{}: field {key}", v.name);
        }
    }
}

#[test]
fn stdin_lines_decode_in_order_and_bad_lines_do_not_stop_the_rest() {
    let file = v2_datagrams();
    let good = file.vectors[0].hex.as_deref().unwrap();
    let input = format!(
        "{good}\nnot hex\n\n01\n{}\n",
        file.vectors[1].hex.as_deref().unwrap()
    );
    let out = burrow(&["decode", "v2"], Some(&input));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed line makes the exit status 1"
    );
    let lines = json_lines(&out);
    assert_eq!(
        lines.len(),
        4,
        "blank line skipped, every other line answered"
    );
    assert_eq!(lines[0]["type"], "udp");
    assert_eq!(
        lines[0]["session_id"],
        "0b6e4c3e-6a4f-4f55-9d1c-3b1f2a7c9e10"
    );
    assert!(lines[1]["error"].as_str().unwrap().contains("invalid hex"));
    assert_eq!(lines[2]["error"], "IP datagram carries no packet");
    assert_eq!(lines[3]["type"], "ip");
}

#[test]
fn connect_vectors_print_their_fields_in_wire_order() {
    for v in &connect_stream().vectors {
        let kind = match v.kind.as_str() {
            "stream.connect_request" => "connect-request",
            "stream.connect_response" => "connect-response",
            other => panic!("{}: unexpected kind {other}", v.name),
        };
        let out = burrow(&["decode", kind, v.hex.as_deref().unwrap()], None);
        assert!(out.status.success(), "{}: {:?}", v.name, json_lines(&out));
        let got = &json_lines(&out)[0];
        for key in ["dest", "type", "type_value", "error", "metadata"] {
            if let Some(want) = v.fields.get(key) {
                assert_eq!(&got[key], want, "{}: field {key}", v.name);
            }
        }
        assert!(
            got.get("body_hex").is_none(),
            "{}: no body in the vector",
            v.name
        );
    }
}

#[test]
fn icmp_echo_vectors_show_their_fields() {
    let file = icmp();
    let echoes: Vec<_> = file
        .vectors
        .iter()
        .filter(|v| v.kind == "icmp.encode")
        .collect();
    assert_eq!(echoes.len(), 2);
    for v in echoes {
        let out = burrow(&["decode", "icmp", v.hex.as_deref().unwrap()], None);
        assert!(out.status.success(), "{}", v.name);
        let got = &json_lines(&out)[0];
        assert_eq!(got["message"], "echo_request", "{}", v.name);
        assert_eq!(got["src"], v.fields["src"], "{}", v.name);
        assert_eq!(got["dst"], v.fields["dst"], "{}", v.name);
        assert_eq!(got["echo_id"], v.fields["echo_id"], "{}", v.name);
        assert_eq!(got["seq"], v.fields["seq"], "{}", v.name);
        let ttl = v.fields.get("ttl").or(v.fields.get("hop_limit")).unwrap();
        assert_eq!(&got["ttl"], ttl, "{}", v.name);
        assert_eq!(
            got["data_hex"],
            hex::encode(v.str_field("data")),
            "{}",
            v.name
        );
    }
}

#[test]
fn hex_separators_are_tolerated() {
    let out = burrow(
        &[
            "decode",
            "v3",
            "0x03:00 000102030405060708090a0b0c0d0e0f 0000",
        ],
        None,
    );
    assert!(out.status.success());
    assert_eq!(json_lines(&out)[0]["type"], "registration_response");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    /// Batches of random inputs, every kind: one JSON line per input, exit 0 or 1, never a panic.
    #[test]
    fn arbitrary_input_never_panics(
        lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..200)
    ) {
        let input: String = lines.iter().map(|l| format!("{}\n", hex::encode(l))).collect();
        let expected = lines.iter().filter(|l| !l.is_empty()).count();
        for kind in ["v3", "v2", "connect-request", "connect-response", "icmp"] {
            let out = burrow(&["decode", kind], Some(&input));
            let code = out.status.code();
            prop_assert!(
                code == Some(0) || code == Some(1),
                "{kind}: exit {code:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            prop_assert_eq!(json_lines(&out).len(), expected, "{}", kind);
        }
    }
}
