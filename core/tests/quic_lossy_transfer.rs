//! Bulk transfer between two peers on burrow's QUIC settings over a lossy path (20 ms RTT),
//! on virtual time: the transport's defaults must not slow down under a little loss.

use burrow_core::quic::send_window;
use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::quic::SERVER_NAME;
use bytes::BytesMut;
use quinn_proto::{ClientConfig, DatagramEvent, Dir, Endpoint, EndpointConfig, ServerConfig};
use rustls::pki_types::PrivatePkcs8KeyDer;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One transfer: `total` bytes client to server over a 20 ms RTT path that loses
/// `loss_per_mille` of the packets each way (a fixed pseudo-random sequence) and, with `rate`,
/// carries at most that many bytes per second client to server, queueing the rest without
/// limit. With `refit`, the client sizes its send window as the tunnel's connections do.
/// `reorder_per_mille` of the client's packets take a path 5 ms shorter, overtaking those
/// sent up to 5 ms before them.
struct Transfer {
    total: usize,
    loss_per_mille: u64,
    rate: Option<u64>,
    refit: bool,
    reorder_per_mille: u64,
    /// Which pseudo-random loss sequence.
    loss_seed: u64,
}

/// Steps the pseudo-random sequence `n`; true `per_mille` times in a thousand.
fn chance(n: &mut u64, per_mille: u64) -> bool {
    *n = n
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*n >> 33) % 1000 < per_mille
}

/// What a transfer took: virtual time, the server's ACK frames, the client's lost packets, the
/// client's largest smoothed RTT.
fn run(settings: &QuicSettings, t: Transfer) -> (Duration, u64, u64, Duration) {
    let Transfer {
        total,
        loss_per_mille,
        rate,
        refit,
        reorder_per_mille,
        loss_seed,
    } = t;
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.into()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    let mut scfg = ServerConfig::with_crypto(Arc::new(
        tls::server_config(vec![ck.cert.der().clone()], key.into(), PostQuantum::Prefer).unwrap(),
    ));
    scfg.transport_config(settings.transport_config(true));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let mut ccfg = ClientConfig::new(Arc::new(
        tls::client_config(roots, PostQuantum::Prefer).unwrap(),
    ));
    ccfg.transport_config(settings.transport_config(true));
    let t0 = Instant::now();
    let mut sep = Endpoint::new(
        Arc::new(EndpointConfig::default()),
        Some(Arc::new(scfg)),
        true,
        Some([1; 32]),
    );
    let mut cep = Endpoint::new(
        Arc::new(EndpointConfig::default()),
        None,
        true,
        Some([2; 32]),
    );
    let sa = "127.0.0.1:1".parse().unwrap();
    let ca = "127.0.0.1:2".parse().unwrap();
    let (ch, mut cc) = cep.connect(t0, ccfg, sa, SERVER_NAME).unwrap();
    let mut sc: Option<(quinn_proto::ConnectionHandle, quinn_proto::Connection)> = None;
    let mut to_s: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut to_c: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let one_way = Duration::from_millis(10);
    let mut rng: u64 = loss_seed;
    let drop = |n: &mut u64| chance(n, loss_per_mille);
    // A sequence of its own, so the losses stay the same with and without reordering.
    let mut early_rng: u64 = 999;
    let mut early = move || chance(&mut early_rng, reorder_per_mille);
    let mut written = 0usize;
    let mut stream = None;
    let mut received = 0usize;
    let mut now = t0;
    let mut buf = Vec::new();
    let mut scratch = Vec::new();
    let mut link_free = t0;
    let mut max_rtt = Duration::ZERO;
    while now < t0 + Duration::from_secs(120) {
        now += Duration::from_micros(250);
        if cc.poll_timeout().is_some_and(|t| t <= now) {
            cc.handle_timeout(now);
        }
        if let Some((_, c)) = sc.as_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        while to_s.front().is_some_and(|(t, _)| *t <= now) {
            let (_, d) = to_s.pop_front().unwrap();
            match sep.handle(now, ca, None, None, BytesMut::from(&d[..]), &mut scratch) {
                Some(DatagramEvent::NewConnection(inc)) => {
                    let (h, c) = sep.accept(inc, now, &mut scratch, None).unwrap();
                    sc = Some((h, c));
                }
                Some(DatagramEvent::ConnectionEvent(_, ev)) => {
                    sc.as_mut().unwrap().1.handle_event(ev);
                }
                _ => {}
            }
        }
        while to_c.front().is_some_and(|(t, _)| *t <= now) {
            let (_, d) = to_c.pop_front().unwrap();
            if let Some(DatagramEvent::ConnectionEvent(_, ev)) =
                cep.handle(now, sa, None, None, BytesMut::from(&d[..]), &mut scratch)
            {
                cc.handle_event(ev);
            }
        }
        if !cc.is_handshaking() && stream.is_none() {
            stream = cc.streams().open(Dir::Bi);
        }
        if let Some(id) = stream {
            while written < total {
                match cc
                    .send_stream(id)
                    .write(&vec![7u8; (total - written).min(65536)])
                {
                    Ok(n) if n > 0 => written += n,
                    _ => break,
                }
            }
        }
        while let Some(ev) = cc.poll_endpoint_events() {
            if let Some(ev) = cep.handle_event(ch, ev) {
                cc.handle_event(ev);
            }
        }
        if refit {
            send_window::refit(&mut cc);
        }
        while cc.poll().is_some() {}
        while let Some(t) = cc.poll_transmit(now, 1, &mut buf) {
            if !drop(&mut rng) {
                // Serialised behind what the link still carries, at its rate.
                let sent = rate.map_or(now, |r| {
                    let start = link_free.max(now);
                    link_free = start + Duration::from_nanos(t.size as u64 * 1_000_000_000 / r);
                    link_free
                });
                let at = if early() {
                    sent + one_way / 2
                } else {
                    sent + one_way
                };
                // In arrival order, an overtaking packet before those it overtook.
                let i = to_s.partition_point(|(t, _)| *t <= at);
                to_s.insert(i, (at, buf[..t.size].to_vec()));
            }
            buf.clear();
        }
        if let Some((h, c)) = sc.as_mut() {
            while let Some(ev) = c.poll_endpoint_events() {
                if let Some(ev) = sep.handle_event(*h, ev) {
                    c.handle_event(ev);
                }
            }
            while c.poll().is_some() {}
            // The client's only stream (its first bidirectional one), read as it comes.
            let _ = c.streams().accept(Dir::Bi);
            let id = quinn_proto::StreamId::new(quinn_proto::Side::Client, Dir::Bi, 0);
            if let Ok(mut r) = c.recv_stream(id).read(true) {
                while let Ok(Some(ch)) = r.next(usize::MAX) {
                    received += ch.bytes.len();
                }
                let _ = r.finalize();
            }
            while let Some(t) = c.poll_transmit(now, 1, &mut buf) {
                if !drop(&mut rng) {
                    to_c.push_back((now + one_way, buf[..t.size].to_vec()));
                }
                buf.clear();
            }
        }
        if !cc.is_handshaking() {
            // quinn's initial estimate (333 ms) stands until the handshake's sample.
            max_rtt = max_rtt.max(cc.rtt());
        }
        if received >= total {
            break;
        }
    }
    let acks = sc.as_ref().map_or(0, |(_, c)| c.stats().frame_tx.acks);
    (now - t0, acks, cc.stats().path.lost_packets, max_rtt)
}

/// 2 MB at 1% loss takes 0.38 s with RFC 9000's ACK per 2 packets; asking the peer for fewer
/// ACKs (the ACK frequency extension, threshold 3-9, tried in 82851cb) took 1.8-2.1 s with
/// quinn-proto 0.11, which is why burrow does not ask.
#[test]
fn the_default_settings_move_2_mb_at_1_percent_loss_in_well_under_a_second() {
    let t = Transfer {
        total: 2_000_000,
        loss_per_mille: 10,
        rate: None,
        refit: false,
        reorder_per_mille: 0,
        loss_seed: 12345,
    };
    let (took, _, lost, _) = run(&QuicSettings::default(), t);
    assert!(lost > 0, "no loss happened");
    assert!(took < Duration::from_millis(800), "took {took:?}");
}

/// The send window sized from the path (send_window.rs) leaves a path without queueing as
/// fast as quinn's fixed 10 MB window, with and without loss, over four loss sequences: once
/// the two windows let different writes through, packets carry different frames and the same
/// sequence loses different data, so one sequence alone can go either way by chance (12345
/// at 1%: fitted 5.60 s, fixed 4.98 s; the other three took the same time with both).
#[test]
fn a_send_window_fitted_to_the_path_does_not_slow_a_lossy_transfer() {
    for loss_per_mille in [0, 10, 30] {
        let (mut fixed, mut fitted) = (Duration::ZERO, Duration::ZERO);
        for loss_seed in [12345, 1, 2, 3] {
            let t = |refit| Transfer {
                total: 8_000_000,
                loss_per_mille,
                rate: None,
                refit,
                reorder_per_mille: 0,
                loss_seed,
            };
            fixed += run(&QuicSettings::default(), t(false)).0;
            let (took, _, lost, _) = run(&QuicSettings::default(), t(true));
            assert!(
                loss_per_mille == 0 || lost > 0,
                "no loss at {loss_per_mille}"
            );
            fitted += took;
        }
        assert!(
            fitted.as_secs_f64() <= fixed.as_secs_f64() * 1.05,
            "{loss_per_mille} per mille: fitted {fitted:?} against fixed {fixed:?}"
        );
    }
}

/// Behind a slow link that queues without limit (10 MB/s, so 200 KB fill the 20 ms path),
/// quinn's fixed window lets Cubic stack seconds of queue; the fitted one keeps the queue near
/// the path's own size at the same throughput.
#[test]
fn a_send_window_fitted_to_the_path_trims_a_standing_queue() {
    let t = |refit| Transfer {
        total: 16_000_000,
        loss_per_mille: 0,
        rate: Some(10_000_000),
        refit,
        reorder_per_mille: 0,
        loss_seed: 12345,
    };
    let (fixed, _, _, fixed_rtt) = run(&QuicSettings::default(), t(false));
    let (fitted, _, _, fitted_rtt) = run(&QuicSettings::default(), t(true));
    assert!(
        fitted.as_secs_f64() <= fixed.as_secs_f64() * 1.05,
        "fitted {fitted:?} against fixed {fixed:?}"
    );
    assert!(
        fitted_rtt * 3 < fixed_rtt,
        "largest smoothed RTT fitted {fitted_rtt:?} against fixed {fixed_rtt:?}"
    );
    eprintln!("took {fitted:?} / {fixed:?}, RTT {fitted_rtt:?} / {fixed_rtt:?}");
}

/// Packets that overtake others are not losses: with 1% or 3% of them taking a path 5 ms
/// shorter (a quarter of the RTT), 8 MB take 0.51 and 0.87 s against 0.22 s over a path that
/// keeps order. With RFC 9002's packet threshold (3) and quinn's 9/8 RTT, which took each
/// overtaken packet for lost and cut the window, they took 7.05 and 9.93 s. What is left comes
/// from the spurious losses still declared (659 packets at 1%).
#[test]
fn reordering_is_not_taken_for_loss() {
    let t = |reorder_per_mille| Transfer {
        total: 8_000_000,
        loss_per_mille: 0,
        rate: None,
        refit: true,
        reorder_per_mille,
        loss_seed: 12345,
    };
    let (clean, _, _, _) = run(&QuicSettings::default(), t(0));
    for reorder in [10, 30] {
        let (took, _, _, _) = run(&QuicSettings::default(), t(reorder));
        eprintln!("{reorder} per mille overtaking: {took:?}, in order {clean:?}");
        assert!(
            took.as_secs_f64() <= clean.as_secs_f64() * 5.0,
            "{reorder} per mille overtaking: {took:?} against {clean:?} in order"
        );
    }
}
