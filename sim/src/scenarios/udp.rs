//! UDP-session scenarios (datagram v3): echo at scale under loss, idle expiry, migration when
//! a connection dies, and a registration flood against the flow limit.

use std::net::SocketAddr;
use std::time::Duration;

use burrow_core::datagram::v3::ResponseCode;
use burrow_core::session::DropReason;
use burrow_core::tunnel::edge::ConnId;

use burrow_core::connector::Event;
use burrow_core::session::DEFAULT_IDLE;
use burrow_core::tunnel::connector::CloseReason;

use super::{expect, register, setup_datagrams, Params, Setup, HA};
use crate::udp::{Eyeball, ECHO_PORT, UNREACHABLE};
use crate::world::Happening;

/// `n` destinations: echo services, every 50th unreachable when `unreachable` is set.
fn dests(n: usize, unreachable: bool) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            let host = (i % 250 + 1) as u8;
            if unreachable && i % 50 == 49 {
                SocketAddr::from(([UNREACHABLE[0], UNREACHABLE[1], 0, host], ECHO_PORT))
            } else {
                SocketAddr::from(([10, 0, (i / 250 % 250) as u8, host], ECHO_PORT))
            }
        })
        .collect()
}

/// Session ids from the run's seed.
fn ids(s: &mut Setup) -> impl Iterator<Item = u128> {
    use rand_chacha::rand_core::Rng;
    let base = u128::from(s.rng.next_u64()) << 64;
    (0u128..).map(move |i| base | i)
}

/// Runs the eyeball until `done` says so or `limit` passes. A served connection that closes
/// is a failure unless `on_event` takes it, or the network is hostile: then the drive stops
/// with the reason in `s.lost` (and later drives do nothing), for [`degraded`] to check.
fn drive(
    s: &mut Setup,
    eye: &mut Eyeball,
    limit: Duration,
    mut done: impl FnMut(&Eyeball, &crate::world::World) -> bool,
) -> Result<(), String> {
    drive_with(s, eye, limit, &mut done, |_, _| Ok(false))
}

/// [`drive`], handing every event to `on_event` first (true: handled).
fn drive_with(
    s: &mut Setup,
    eye: &mut Eyeball,
    limit: Duration,
    done: &mut impl FnMut(&Eyeball, &crate::world::World) -> bool,
    mut on_event: impl FnMut(&mut Eyeball, &Happening) -> Result<bool, String>,
) -> Result<(), String> {
    if s.lost.is_some() {
        return Ok(());
    }
    let limit = s.world.after(limit);
    let (hostile, lost) = (s.hostile, &mut s.lost);
    s.world.run_ticking(limit, |w, h| {
        if let Some(h) = &h {
            if on_event(eye, h)? {
                return Ok(false);
            }
        }
        if let Some(Happening::Connector(
            _,
            Event::LinkClosed {
                reason,
                was_registered: true,
                ..
            },
        )) = &h
        {
            if hostile {
                *lost = Some(reason.clone());
                return Ok(true);
            }
            return Err(format!("connection closed: {reason}"));
        }
        if h.is_some() {
            return Ok(false);
        }
        let now = w.now;
        if let Some(edge) = w.endpoint() {
            eye.tick(now, edge);
        }
        if let Some(t) = eye.next_wakeup() {
            w.wakeups.insert(t);
        }
        Ok(done(eye, w))
    })
}

/// A served connection died mid-traffic on a hostile network (`s.lost`): the eyeballs stop,
/// and what a user relies on then is checked. The connector comes back (every HA index of
/// every node in `nodes` serves again within the registration bound); every session ends by
/// its idle timer, `idle` after the last packet its origin socket carried (nothing hangs);
/// nothing is left (sessions, origin sockets, flow slots, session timers, datagrams queued on
/// connections); and no datagram that arrived was wrong (`strays`, as the eyeballs count them:
/// an echo carries its session's id, so a mixed-up or corrupted one is a stray).
pub(super) fn degraded(
    s: &mut Setup,
    nodes: &[usize],
    idle: Duration,
    strays: u64,
    last_registration: Option<crate::clock::VirtualTime>,
) -> Result<u64, String> {
    let why = s.lost.take().unwrap_or(CloseReason::TimedOut);
    let w = &mut s.world;
    w.trace.record(
        w.now,
        &format!("hostile: a connection died ({why}); degrading"),
    );
    expect(
        strays == 0,
        "no stray or corrupted datagram reached an eyeball",
        w,
    )?;
    let ready = |w: &crate::world::World| {
        nodes.iter().all(|&n| {
            let c = &w.connectors[n].connector;
            c.ready_connections() == c.ha_connections()
        })
    };
    let limit = w.after(super::REGISTER_WITHIN);
    w.run_ticking(limit, |w, _| Ok(ready(w)))?;
    expect(
        ready(w),
        "the connector comes back: every HA connection serves again",
        w,
    )?;
    // Payloads still queued at the edge reach their sessions after the eyeballs stopped, so
    // each session's timer runs from its own last packet (or last registration, which
    // restarts it too).
    let limit = w.after(idle + Duration::from_secs(60));
    w.run_ticking(limit, |w, _| {
        Ok(w.udp
            .last_io()
            .max(last_registration)
            .is_none_or(|t| w.now.since_start() > t.since_start() + idle + Duration::from_secs(1)))
    })?;
    let open: usize = nodes
        .iter()
        .map(|&n| w.connectors[n].hub().sessions.active())
        .sum();
    expect(
        open == 0 && w.udp.sockets() == 0,
        &format!(
            "every session ends within {idle:?} of its last packet ({open} open, {} sockets)",
            w.udp.sockets()
        ),
        w,
    )?;
    for &n in nodes {
        let node = &w.connectors[n];
        let queued: usize = (0..node.connector.ha_connections() as u8)
            .filter_map(|i| node.connector.connection(i))
            .map(|c| c.datagram_bytes_queued())
            .sum();
        let leftovers = (
            node.hub().sessions.poll_timeout().is_some(),
            node.connector.flow_stats().active,
            queued,
        );
        expect(
            leftovers == (false, 0, 0),
            &format!("nothing left (session timer armed, flow slots, datagram bytes queued): {leftovers:?}"),
            w,
        )?;
    }
    w.trace.record(w.now, &w.net.stats());
    Ok(w.trace.hash())
}

/// Waits `d` of virtual time with the eyeball still taking what arrives.
fn settle(s: &mut Setup, eye: &mut Eyeball, d: Duration) -> Result<(), String> {
    let until = s.world.after(d);
    drive(s, eye, d, move |_, w| w.now >= until)
}

/// Settles until nothing is on its way: the edge's and the connector's datagram send queues
/// are empty and no echo is due from an origin, then a second more for packets in flight (at
/// most two minutes). Behind a lossy path's small window, and quinn's probes backing off, a
/// queue may sit unsent for more than a second: a payload still queued is neither delivered
/// nor lost, so the accounting must not begin before it leaves.
fn drain_queues(
    s: &mut Setup,
    eye: &mut Eyeball,
    c: usize,
    edge_conns: &[ConnId],
) -> Result<(), String> {
    settle(s, eye, Duration::from_secs(2))?;
    for _ in 0..120 {
        let node = &s.world.connectors[c];
        let connector_queued: usize = (0..node.connector.ha_connections() as u8)
            .filter_map(|i| node.connector.connection(i))
            .map(|conn| conn.datagram_bytes_queued())
            .sum();
        let origin_due = s.world.udp.next_deadline().is_some();
        let edge_queued: usize = match s.world.endpoint() {
            Some(edge) => edge_conns
                .iter()
                .map(|&conn| edge.datagram_bytes_queued(conn))
                .sum(),
            None => 0,
        };
        settle(s, eye, Duration::from_secs(1))?;
        if connector_queued == 0 && edge_queued == 0 && !origin_due {
            break;
        }
    }
    Ok(())
}

/// Checks that every payload the eyeball sent is accounted for: echoed, or dropped where
/// something counted it (the manager by reason, the hub, quinn, or the network as quinn's
/// frame counters show).
fn account(s: &Setup, eye: &Eyeball, edge_conns: &[ConnId], c: usize) -> Result<String, String> {
    let w = &s.world;
    let o = w.udp.stats();
    let node = &w.connectors[c];
    let hub = node.hub().stats();
    let m = node.hub().sessions.stats();
    let edge = w.endpoint_ref().ok_or("edge down")?;
    let (mut e_tx, mut e_rx) = (0, 0);
    for c in edge_conns {
        if let Some(st) = edge.quic_stats(*c) {
            e_tx += st.frame_tx.datagram;
            e_rx += st.frame_rx.datagram;
        }
    }
    let (mut c_tx, mut c_rx) = (0u64, 0u64);
    for i in 0..node.connector.ha_connections() as u8 {
        if let Some(conn) = node.connector.connection(i) {
            let st = conn.quic_stats();
            c_tx += st.frame_tx.datagram;
            c_rx += st.frame_rx.datagram;
        }
    }
    // Datagrams lost on the way, by quinn's own count of frames sent and received, plus those
    // its receive buffer shed.
    let lost_e2c = e_tx.saturating_sub(c_rx) + c_rx.saturating_sub(hub.datagrams_in);
    let lost_c2e = c_tx.saturating_sub(e_rx) + e_rx.saturating_sub(eye.stats.datagrams_in);
    let manager_drops = [
        DropReason::UnknownFlow,
        DropReason::PendingFull,
        DropReason::Unopened,
        DropReason::Repeated,
    ]
    .iter()
    .map(|r| m.dropped(*r))
    .sum::<u64>();
    let st = &eye.stats;
    // Payloads lost on the way in, from both ends' counts.
    let payloads_lost_e2c =
        (st.payloads_sent - st.bundled - hub.payloads_in) + (st.bundled - m.bundled_in);
    let lost_out = hub.datagrams_out - st.datagrams_in;
    let line = format!(
        "udp accounting: sent {} echoed {} | payloads lost e2c {payloads_lost_e2c} (quinn {lost_e2c}) | datagrams lost c2e {lost_out} (quinn {lost_c2e}) | manager drops {manager_drops} | to origin {} from origin {} queued {} refused {}",
        st.payloads_sent, st.echoes, o.to_origin, o.from_origin, o.echoes_queued, o.echoes_refused
    );
    expect(st.strays == 0, "no stray datagram reaches the eyeball", w)?;
    expect(
        o.to_origin + manager_drops == hub.payloads_in + m.bundled_in,
        &format!("every payload received is forwarded or counted ({line})"),
        w,
    )?;
    expect(
        o.to_origin == o.from_origin,
        &format!("every forwarded payload is echoed ({line})"),
        w,
    )?;
    expect(
        o.from_origin == o.echoes_queued + o.echoes_refused && st.echoes <= o.echoes_queued,
        &format!("every echo is queued or counted ({line})"),
        w,
    )?;
    expect(
        payloads_lost_e2c <= lost_e2c && lost_out <= lost_c2e,
        &format!("whatever went missing on the way, quinn saw go missing ({line})"),
        w,
    )?;
    if s.world.net.stats().lost + s.world.net.stats().partitioned == 0 {
        expect(
            lost_e2c + lost_c2e == 0,
            &format!("without loss nothing goes missing ({line})"),
            w,
        )?;
    }
    Ok(line)
}

/// Many concurrent sessions echo through one connection under loss; unreachable origins are
/// refused with `UnableToBindSocket`.
pub(super) fn udp_echo(p: &Params) -> Result<u64, String> {
    let mut s = setup_datagrams(p);
    let c = s.add_connector(HA, s.secret.clone());
    let conn = register(&mut s, c)?;
    let n = if p.quick { 300 } else { 10_000 };
    let spread = Duration::from_millis(if p.quick { 500 } else { 5_000 });
    let ids = ids(&mut s);
    let mut eye = Eyeball::new(ids, &dests(n, true), &[conn], s.world.now, spread, 0);
    drive(&mut s, &mut eye, Duration::from_secs(120), |e, _| {
        e.sessions
            .iter()
            .all(|s| s.refused.is_some() || (s.registered && s.sent >= e.per_session))
    })?;
    drain_queues(&mut s, &mut eye, c, &[conn])?;
    if s.lost.is_some() {
        return degraded(
            &mut s,
            &[c],
            DEFAULT_IDLE,
            eye.stats.strays,
            eye.last_registration,
        );
    }
    let unreachable = n / 50;
    let w = &s.world;
    let refused = eye.sessions.iter().filter(|s| s.refused.is_some()).count();
    expect(
        eye.sessions
            .iter()
            .filter(|s| s.refused.is_some())
            .all(|s| {
                s.refused == Some(ResponseCode::UnableToBindSocket)
                    && s.dest.ip().to_string().starts_with("10.99.")
            }),
        "only unreachable origins are refused, with UnableToBindSocket",
        w,
    )?;
    expect(
        refused == unreachable,
        &format!("{refused} refused, {unreachable} unreachable"),
        w,
    )?;
    expect(
        w.connectors[c].hub().sessions.active() == n - unreachable,
        "every reachable session is live",
        w,
    )?;
    expect(
        w.udp.sockets() == n - unreachable,
        "one origin socket per session",
        w,
    )?;
    // A lost refusal brings a retried registration, which dials (and fails) again.
    expect(
        w.connectors[c].hub().sessions.stats().bind_failures >= unreachable as u64,
        "bind failures counted",
        w,
    )?;
    let line = account(&s, &eye, &[conn], c)?;
    s.world.trace.record(s.world.now, &line);
    Ok(s.world.trace.hash())
}

/// Sessions end on virtual time when idle; every socket is closed.
pub(super) fn udp_idle(p: &Params) -> Result<u64, String> {
    let mut s = setup_datagrams(p);
    let c = s.add_connector(1, s.secret.clone());
    let conn = register(&mut s, c)?;
    let n = 50;
    let hint = Duration::from_secs(3);
    let ids = ids(&mut s);
    let mut eye = Eyeball::new(
        ids,
        &dests(n, false),
        &[conn],
        s.world.now,
        Duration::from_millis(100),
        hint.as_secs() as u16,
    );
    drive(&mut s, &mut eye, Duration::from_secs(60), |e, _| {
        e.sessions
            .iter()
            .all(|s| s.registered && s.sent >= e.per_session)
    })?;
    if s.lost.is_some() {
        return degraded(&mut s, &[c], hint, eye.stats.strays, eye.last_registration);
    }
    // Sessions that registered early may end before the last one is done: what a user relies
    // on is that none ends while in use, i.e. each origin socket closes only after carrying
    // nothing for the whole idle hint, and that each does close then. Payloads the edge still
    // had queued may arrive after the eyeball is done, so each socket's own last packet counts.
    // A registration retried because its answer was lost restarts the session's idle timer
    // as in cloudflared, so the quiet time also runs from the eyeball's last registration.
    let limit = s.world.after(Duration::from_secs(60));
    while s.world.now < limit && s.lost.is_none() {
        let last = s.world.udp.last_io().max(eye.last_registration);
        let quiet_enough = last.is_none_or(|t| {
            s.world.now.since_start() > t.since_start() + hint + Duration::from_secs(1)
        });
        if quiet_enough {
            break;
        }
        settle(&mut s, &mut eye, Duration::from_millis(500))?;
    }
    if s.lost.is_some() {
        return degraded(&mut s, &[c], hint, eye.stats.strays, eye.last_registration);
    }
    let w = &s.world;
    // A registration retried after its session idled out (its answer was lost) opens it
    // again: every session gets a socket, and every socket opened ends by the idle timer.
    let m = w.connectors[c].hub().sessions.stats();
    expect(
        w.udp.stats().sockets_opened >= n as u64 && w.udp.stats().sockets_opened == m.total_flows,
        &format!(
            "every session got its origin socket ({} opened for {n}; {m:?})",
            w.udp.stats().sockets_opened
        ),
        w,
    )?;
    let early: Vec<_> = w
        .udp
        .quiet_at_close()
        .iter()
        .filter(|(_, quiet)| *quiet < hint)
        .collect();
    expect(
        early.is_empty(),
        &format!("no session ends while in use (closed after less than {hint:?} quiet: {early:?})"),
        w,
    )?;
    expect(
        w.connectors[c].hub().sessions.active() == 0,
        &format!(
            "every session ended within {hint:?} (and a second) of its socket's last packet or its last registration ({} open)",
            w.connectors[c].hub().sessions.active()
        ),
        w,
    )?;
    expect(w.udp.sockets() == 0, "every origin socket closed", w)?;
    expect(
        w.connectors[c].hub().sessions.stats().idle_closed == m.total_flows,
        "every session opened ended by the idle timer",
        w,
    )?;
    expect(
        w.connectors[c].hub().sessions.poll_timeout().is_none(),
        "no timer left armed",
        w,
    )?;
    record_stats(&mut s, &eye, c);
    Ok(s.world.trace.hash())
}

/// A connection dies during traffic (its path to the edge is cut): the supervisor re-homes
/// its sessions to the other HA connection, the edge re-registers them there (each as its
/// eyeball next sends), and nothing is torn down. The eyeballs' sessions are spread over both
/// connections, as the edge spreads them.
pub(super) fn udp_migration(p: &Params) -> Result<u64, String> {
    let mut s = setup_datagrams(p);
    let c = s.add_connector(2, s.secret.clone());
    register(&mut s, c)?;
    let limit = s.world.after(super::REGISTER_WITHIN);
    s.world
        .run_ticking(limit, |w, _| Ok(w.connectors[c].live().len() == 2))?;
    let live = s.world.connectors[c].live();
    expect(live.len() == 2, "both HA connections serve", &s.world)?;
    let (conn_a, conn_b) = (live[0], live[1]);
    let n = if p.quick { 100 } else { 1_000 };
    let ids = ids(&mut s);
    let mut eye = Eyeball::new(
        ids,
        &dests(n, false),
        &[conn_a, conn_b],
        s.world.now,
        Duration::from_millis(200),
        0,
    );
    eye.per_session = 80;
    // The same offered load at both scales, 250 datagrams of ~250 B a second: half of what
    // one connection carries at 10% loss (~1 MSS per RTT / sqrt(loss), ~130 KB/s). At 100 ms
    // apart, 1000 sessions offered 2.5 MB/s: the edge's datagram queue (1 MiB) stayed full,
    // registrations waited in it for seconds, and sessions registered late or had sent
    // everything before the move. This scenario is about migration, not congestion.
    eye.interval = Duration::from_millis(4 * n as u64);
    // Traffic flows on every session before A dies, bounded by half of a session's traffic
    // so that every one is mid-traffic when A dies.
    let mid_traffic = eye.interval * eye.per_session / 2;
    drive(&mut s, &mut eye, mid_traffic, |e, _| {
        e.sessions.iter().all(|s| s.registered && s.echoed >= 2)
    })?;
    if s.lost.is_some() {
        return degraded(
            &mut s,
            &[c],
            DEFAULT_IDLE,
            eye.stats.strays,
            eye.last_registration,
        );
    }
    let opened = s.world.udp.stats().sockets_opened;
    let pending: Vec<String> = eye
        .sessions
        .iter()
        .filter(|s| !s.registered)
        .map(|s| format!("{} registrations {}", s.id, s.registrations))
        .collect();
    expect(
        opened == n as u64,
        &format!(
            "one socket per session ({opened} for {n}); unregistered: {pending:?} {:?} {:?}",
            eye.stats,
            s.world.connectors[c].hub().sessions.stats()
        ),
        &s.world,
    )?;
    // Connection A's path dies: both ends notice by idle timeout. The connector re-homes A's
    // sessions to B; the edge, once it drops A, re-registers its flows on B.
    s.world.partition_index(c, 0, true);
    let on_a = eye.sessions.iter().filter(|s| s.conn == conn_a).count();
    let before: Vec<u32> = eye.sessions.iter().map(|s| s.echoed).collect();
    let rest = eye.interval * eye.per_session + Duration::from_secs(60);
    let (mut edge_moved, mut connector_moved) = (false, false);
    drive_with(
        &mut s,
        &mut eye,
        rest,
        &mut |e, _| {
            e.sessions
                .iter()
                .all(|s| s.registered && s.sent >= e.per_session)
        },
        |eye, h| match h {
            Happening::Endpoint(burrow_core::tunnel::edge::EdgeEvent::ConnectionClosed {
                conn,
                ..
            }) if *conn == conn_a => {
                eye.move_sessions(conn_a, conn_b);
                edge_moved = true;
                Ok(true)
            }
            Happening::Connector(_, Event::LinkClosed { .. }) if !connector_moved => {
                connector_moved = true;
                Ok(true)
            }
            // Index 0 reconnects (through the cut, in vain) while B serves.
            Happening::Connector(
                _,
                Event::LinkClosed {
                    was_registered: false,
                    ..
                },
            ) => Ok(true),
            _ => Ok(false),
        },
    )?;
    settle(&mut s, &mut eye, Duration::from_secs(2))?;
    if s.lost.is_some() {
        // B died too. The cut of A's path is the scenario's, not the network's: heal it, so
        // that coming back is possible.
        s.world.partition_index(c, 0, false);
        return degraded(
            &mut s,
            &[c],
            DEFAULT_IDLE,
            eye.stats.strays,
            eye.last_registration,
        );
    }
    let w = &s.world;
    expect(edge_moved && connector_moved, "both ends noticed A die", w)?;
    expect(
        w.udp.stats().sockets_opened == opened,
        "no session was re-opened",
        w,
    )?;
    expect(
        w.udp.stats().sockets_closed == 0,
        &format!(
            "no session was torn down: {} closed, quiet at close {:?}; {:?} {:?}",
            w.udp.stats().sockets_closed,
            &w.udp.quiet_at_close()[..w.udp.quiet_at_close().len().min(8)],
            w.connectors[c].hub().sessions.stats(),
            eye.stats
        ),
        w,
    )?;
    let hub = w.connectors[c].hub();
    expect(hub.sessions.active() == n, "every session lives on", w)?;
    let silent: Vec<String> = eye
        .sessions
        .iter()
        .zip(&before)
        .filter(|(s, b)| s.echoed <= **b)
        .map(|(s, b)| format!("{} sent {} echoed {} (before {b})", s.id, s.sent, s.echoed))
        .collect();
    expect(
        silent.is_empty(),
        &format!(
            "every session echoes after the move; silent: {} {:?} {:?} {:?}",
            silent.len(),
            eye.stats,
            w.udp.stats(),
            hub.sessions.stats()
        ),
        w,
    )?;
    let m = hub.sessions.stats();
    expect(
        m.dropped(DropReason::NoLink) == 0,
        "no origin packet found no connection",
        w,
    )?;
    expect(
        m.migrated >= on_a as u64,
        &format!(
            "A's sessions counted as migrated ({} for {on_a})",
            m.migrated
        ),
        w,
    )?;
    record_stats(&mut s, &eye, c);
    Ok(s.world.trace.hash())
}

/// Far more registrations than the flow limit: exactly the limit is served, the rest refused
/// with `TooManyActiveFlows`, and the manager holds no more than the limit.
pub(super) fn udp_flood(p: &Params) -> Result<u64, String> {
    let mut s = setup_datagrams(p);
    let (limit, flood) = if p.quick {
        (200, 2_000)
    } else {
        (10_000, 100_000)
    };
    s.max_active_flows = Some(limit as u64);
    let c = s.add_connector(1, s.secret.clone());
    let conn = register(&mut s, c)?;
    let ids = ids(&mut s);
    let spread = Duration::from_millis(if p.quick { 1_000 } else { 20_000 });
    let mut eye = Eyeball::new(ids, &dests(flood, false), &[conn], s.world.now, spread, 0);
    eye.per_session = 0;
    eye.bundle = false;
    let mut peak = 0;
    drive(&mut s, &mut eye, Duration::from_secs(300), |e, w| {
        peak = peak.max(w.connectors[c].hub().sessions.active());
        e.sessions
            .iter()
            .all(|s| s.registered || s.refused.is_some())
    })?;
    if s.lost.is_some() {
        return degraded(
            &mut s,
            &[c],
            DEFAULT_IDLE,
            eye.stats.strays,
            eye.last_registration,
        );
    }
    let w = &s.world;
    let ok = eye.sessions.iter().filter(|s| s.registered).count();
    let refused = eye
        .sessions
        .iter()
        .filter(|s| s.refused == Some(ResponseCode::TooManyActiveFlows))
        .count();
    expect(ok == limit, &format!("{ok} served, limit {limit}"), w)?;
    expect(refused == flood - limit, &format!("{refused} refused"), w)?;
    expect(
        peak <= limit,
        &format!("peak {peak} sessions held, limit {limit}"),
        w,
    )?;
    expect(w.udp.sockets() == limit, "sockets stay at the limit", w)?;
    record_stats(&mut s, &eye, c);
    Ok(s.world.trace.hash())
}

/// Puts the run's counters into the trace, so the fingerprint covers the UDP traffic.
fn record_stats(s: &mut Setup, eye: &Eyeball, c: usize) {
    let line = format!(
        "{:?} {:?} {:?}",
        eye.stats,
        s.world.udp.stats(),
        s.world.connectors[c].hub().sessions.stats()
    );
    s.world.trace.record(s.world.now, &line);
}
