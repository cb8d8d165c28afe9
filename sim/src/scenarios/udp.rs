//! UDP-session scenarios (datagram v3): echo at scale under loss, idle expiry, migration when
//! a connection dies, and a registration flood against the flow limit. The clients are public
//! clients of the edge machine's UDP mappings (`burrow edge --udp-map`): the edge opens,
//! registers, migrates and ends their sessions, as the daemon's does.

use std::net::SocketAddr;
use std::time::Duration;

use burrow_core::datagram::v3::ResponseCode;
use burrow_core::session::DropReason;

use burrow_core::connector::Event;
use burrow_core::session::DEFAULT_IDLE;
use burrow_core::tunnel::connector::CloseReason;
use burrow_core::tunnel::edge::ConnId;

use burrow_core::edge;
use burrow_core::session::edge::{
    EdgeDrop, EdgeSessionsConfig, MappingId, MappingKind, SessionEnd, IDLE_HINT_MARGIN_SECS,
};

use super::{expect, register, setup_mapped, Mapped, Params, Setup, HA};
use crate::udp::{UdpClients, ECHO_PORT, UNREACHABLE};
use crate::world::Happening;

/// The mapping whose destination is an echo service.
pub(super) const ECHO: MappingId = MappingId(0);
/// The mapping whose destination the origin network cannot reach.
const NOWHERE: MappingId = MappingId(1);

/// The edge's UDP mappings ([`ECHO`], [`NOWHERE`]) with sessions idle after `idle`.
pub(super) fn mappings(idle: Duration) -> Mapped {
    Mapped {
        sessions: EdgeSessionsConfig {
            idle_timeout: idle,
            ..EdgeSessionsConfig::default()
        },
        kinds: vec![
            MappingKind::Udp {
                dest: SocketAddr::from(([10, 0, 0, 1], ECHO_PORT)),
            },
            MappingKind::Udp {
                dest: SocketAddr::from(([UNREACHABLE[0], UNREACHABLE[1], 0, 1], ECHO_PORT)),
            },
        ],
    }
}

/// The connector's idle timeout of a session the edge times out after `idle` (the hint the
/// edge sends it).
pub(super) fn hint(idle: Duration) -> Duration {
    idle + Duration::from_secs(IDLE_HINT_MARGIN_SECS)
}

/// `n` clients' mappings: [`ECHO`], every 50th [`NOWHERE`] when `unreachable` is set.
fn targets(n: usize, unreachable: bool) -> Vec<MappingId> {
    (0..n)
        .map(|i| {
            if unreachable && i % 50 == 49 {
                NOWHERE
            } else {
                ECHO
            }
        })
        .collect()
}

/// Runs the public clients until `done` says so or `limit` passes; every edge event goes to
/// the clients (which check it). A served connection that closes is a failure unless
/// `on_event` takes it, or the network is hostile: then the run stops with the reason in
/// `s.lost` (and later runs do nothing), for [`degraded`] to check.
pub(super) fn run_clients(
    s: &mut Setup,
    clients: &mut UdpClients,
    limit: Duration,
    mut done: impl FnMut(&UdpClients, &crate::world::World) -> bool,
) -> Result<(), String> {
    run_clients_with(s, clients, limit, &mut done, |_, _| Ok(false))
}

/// [`run_clients`], handing every event to `on_event` too (true: handled).
fn run_clients_with(
    s: &mut Setup,
    clients: &mut UdpClients,
    limit: Duration,
    done: &mut impl FnMut(&UdpClients, &crate::world::World) -> bool,
    mut on_event: impl FnMut(&mut UdpClients, &Happening) -> Result<bool, String>,
) -> Result<(), String> {
    if s.lost.is_some() {
        return Ok(());
    }
    let limit = s.world.after(limit);
    let (hostile, lost) = (s.hostile, &mut s.lost);
    s.world.run_ticking(limit, |w, h| {
        if let Some(Happening::Edge(e)) = &h {
            clients.on_event(e);
        }
        if let Some(h) = &h {
            if on_event(clients, h)? {
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
        // On a hostile network the edge may time a served connection out before the connector
        // notices (each side's idle timer runs on what it hears; seed 82105 at 45%): it died
        // as one the connector saw close, and the datagrams it carried are no longer counted
        // at the edge.
        if let Some(Happening::Edge(edge::Event::ConnectionClosed { conn, reason })) = &h {
            if hostile && w.connectors.iter().any(|n| n.live().contains(conn)) {
                *lost = Some(CloseReason::Remote(format!(
                    "the edge closed {conn:?} first: {reason}"
                )));
                return Ok(true);
            }
        }
        if h.is_some() {
            return Ok(false);
        }
        clients.tick(w);
        if let Some(t) = clients.next_wakeup() {
            w.wakeups.insert(t);
        }
        Ok(done(clients, w))
    })
}

/// Waits `d` of virtual time with the clients still taking what arrives.
fn settle_clients(s: &mut Setup, clients: &mut UdpClients, d: Duration) -> Result<(), String> {
    let until = s.world.after(d);
    run_clients(s, clients, d, move |_, w| w.now >= until)
}

/// Settles until nothing is on its way: the edge's and the connector's datagram send queues
/// are empty and no echo is due from an origin, then a second more for packets in flight (at
/// most two minutes). Behind a lossy path's small window, and quinn's probes backing off, a
/// queue may sit unsent for more than a second: a payload still queued is neither delivered
/// nor lost, so the accounting must not begin before it leaves.
fn drain_client_queues(s: &mut Setup, clients: &mut UdpClients, c: usize) -> Result<(), String> {
    settle_clients(s, clients, Duration::from_secs(2))?;
    for _ in 0..120 {
        let conns = s.world.connectors[c].live();
        let node = &s.world.connectors[c];
        let connector_queued: usize = (0..node.connector.ha_connections() as u8)
            .filter_map(|i| node.connector.connection(i))
            .map(|conn| conn.datagram_bytes_queued())
            .sum();
        let origin_due = s.world.udp.next_deadline().is_some();
        let edge_queued: usize = match s.world.edge_mut() {
            Some(edge) => conns
                .iter()
                .map(|&conn| edge.datagram_bytes_queued(conn))
                .sum(),
            None => 0,
        };
        settle_clients(s, clients, Duration::from_secs(1))?;
        if connector_queued == 0 && edge_queued == 0 && !origin_due {
            break;
        }
    }
    Ok(())
}

/// Runs until every session at the edge has ended (by its idle timer, `edge_idle` after its
/// client's last packet at most) and then the connector's timers have had `hint` (and a
/// second) since the later of that end and the last packet an origin socket carried: the
/// edge retries a registration until the session ends, and each retry restarts the
/// connector's timer, as cloudflared's `handleSessionAlreadyRegistered` does.
pub(super) fn run_out_sessions(
    s: &mut Setup,
    clients: &mut UdpClients,
    edge_idle: Duration,
    hint: Duration,
) -> Result<(), String> {
    let edge_empty =
        |w: &crate::world::World| w.edge().is_none_or(|e| e.sessions().active_sessions() == 0);
    run_clients(s, clients, edge_idle + Duration::from_secs(60), |_, w| {
        edge_empty(w)
    })?;
    if s.lost.is_some() {
        return Ok(());
    }
    expect(
        edge_empty(&s.world),
        &format!("every session at the edge ends within {edge_idle:?} of its client's last packet"),
        &s.world,
    )?;
    // A registration the edge sent before its end may reach the connector after it (queued
    // behind a lossy path's window) and restart that session's timer there too.
    let mut ended = Some(s.world.now);
    let mut seen = registrations(&s.world);
    run_clients(s, clients, hint + Duration::from_secs(60), |_, w| {
        let now = registrations(w);
        if now != seen {
            (seen, ended) = (now, Some(w.now));
        }
        w.udp
            .last_io()
            .max(ended)
            .is_none_or(|t| w.now.since_start() > t.since_start() + hint + Duration::from_secs(1))
    })
}

/// Registrations the connectors' session managers took: new flows, repeats and moves.
fn registrations(w: &crate::world::World) -> u64 {
    w.connectors
        .iter()
        .map(|n| {
            let m = n.hub().sessions.stats();
            m.total_flows + m.retries + m.migrated
        })
        .sum()
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
    // An edge machine's sessions end by its own idle timer, and it retries a registration
    // until then (each retry restarts the connector's timer): the connector's timers run
    // from that end at the latest.
    let mut last_registration = None;
    if w.edge().is_some() {
        let edge_empty =
            |w: &crate::world::World| w.edge().is_none_or(|e| e.sessions().active_sessions() == 0);
        let limit = w.after(idle + Duration::from_secs(60));
        w.run_ticking(limit, |w, _| Ok(edge_empty(w)))?;
        expect(
            edge_empty(w),
            "every session at the edge ends by its idle timer",
            w,
        )?;
        last_registration = last_registration.max(Some(w.now));
    }
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

/// Checks that every payload the clients sent is accounted for: echoed, or dropped where
/// something counted it (the edge and the manager by reason, the hub, quinn, or the network
/// as quinn's frame counters show).
pub(super) fn account_clients(
    s: &Setup,
    clients: &UdpClients,
    nodes: &[usize],
) -> Result<String, String> {
    let w = &s.world;
    let o = w.udp.stats();
    let edge = w.edge().ok_or("edge down")?;
    let es = edge.sessions().stats();
    // Per connector process: datagrams lost on the way, by quinn's own count of frames sent
    // and received, plus those the connector's receive buffer shed; what its datagram plane
    // took in; what its manager dropped, by reason.
    let (mut lost_e2c, mut lost_c2e, mut payloads_in, mut manager_drops) = (0, 0, 0, 0);
    // Connections that refused a datagram without a window cut (loss, or reordering taken for
    // it) before.
    let mut refused_uncut = Vec::new();
    for &n in nodes {
        let node = &w.connectors[n];
        let hub = node.hub().stats();
        let m = node.hub().sessions.stats();
        let (mut e_tx, mut e_rx) = (0, 0);
        for conn in node.history() {
            if let Some(st) = edge.transports().quic.quic_stats(conn) {
                if clients.stats.refused_on.contains_key(&conn) && st.path.congestion_events == 0 {
                    refused_uncut.push(conn);
                }
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
        lost_e2c += e_tx.saturating_sub(c_rx) + c_rx.saturating_sub(hub.datagrams_in);
        lost_c2e += c_tx.saturating_sub(e_rx);
        payloads_in += hub.payloads_in + m.bundled_in;
        manager_drops += [
            DropReason::UnknownFlow,
            DropReason::PendingFull,
            DropReason::Unopened,
            DropReason::Repeated,
        ]
        .iter()
        .map(|r| m.dropped(*r))
        .sum::<u64>();
    }
    // What the edge dropped of the clients' packets, by reason.
    let edge_drops = [
        EdgeDrop::NoConnection,
        EdgeDrop::TooLarge,
        EdgeDrop::SessionsFull,
        EdgeDrop::PendingFull,
        EdgeDrop::Unregistered,
    ]
    .iter()
    .map(|r| es.dropped(*r))
    .sum::<u64>();
    let send_failed = es.dropped(EdgeDrop::SendFailed);
    let st = &clients.stats;
    let payloads_lost_e2c = es.payloads_out.saturating_sub(payloads_in);
    let echoes_lost_c2e = o.echoes_queued.saturating_sub(es.payloads_in);
    let line = format!(
        "udp accounting: sent {} echoed {} | edge out {} dropped {edge_drops} send failed {send_failed} | payloads lost e2c {payloads_lost_e2c} (quinn {lost_e2c}) | echoes lost c2e {echoes_lost_c2e} (quinn {lost_c2e}) | manager drops {manager_drops} | to origin {} from origin {} queued {} refused {}",
        st.sent, st.echoes, es.payloads_out, o.to_origin, o.from_origin, o.echoes_queued, o.echoes_refused
    );
    expect(
        clients.bad.is_empty(),
        &format!(
            "no stray packet or session event reaches a client: {:?}",
            &clients.bad[..clients.bad.len().min(4)]
        ),
        w,
    )?;
    expect(
        st.sent == es.payloads_out + edge_drops,
        &format!("every client payload went into the tunnel or was dropped by the edge, counted ({line})"),
        w,
    )?;
    expect(
        st.echoes == es.payloads_in,
        &format!("every payload the edge delivered reached its client ({line})"),
        w,
    )?;
    expect(
        o.to_origin + manager_drops == payloads_in,
        &format!("every payload received is forwarded or counted ({line})"),
        w,
    )?;
    // On a hostile network a session may end with its connection (v2) right after a payload
    // went out: its echo, due on a closed socket, is never read.
    expect(
        o.to_origin == o.from_origin + o.echoes_unread && (s.hostile || o.echoes_unread == 0),
        &format!(
            "every forwarded payload is echoed ({line}; {} due on a closed socket)",
            o.echoes_unread
        ),
        w,
    )?;
    expect(
        o.from_origin == o.echoes_queued + o.echoes_refused,
        &format!("every echo is queued or counted ({line})"),
        w,
    )?;
    expect(
        payloads_lost_e2c <= lost_e2c + send_failed
            && echoes_lost_c2e <= lost_c2e + es.dropped(EdgeDrop::UnknownSession),
        &format!("whatever went missing on the way, quinn saw go missing ({line})"),
        w,
    )?;
    if s.world.net.stats().lost + s.world.net.stats().partitioned == 0 {
        expect(
            lost_e2c + lost_c2e == 0,
            &format!("without loss nothing goes missing ({line})"),
            w,
        )?;
        expect(
            clients.stats.refused_on.values().sum::<u64>() == send_failed,
            &format!("every refusal the edge counted reached the clients as an event ({line})"),
            w,
        )?;
        // The send queue is bounded (quic-go's 32 datagrams): it refuses, counted, only what
        // a window cut left it no room for. The network reorders even without loss, and a
        // packet overtaken far enough is taken for lost (quic_lossy_transfer.rs).
        expect(
            refused_uncut.is_empty(),
            &format!("without loss the edge refuses only on a connection whose window was cut: {refused_uncut:?} ({line})"),
            w,
        )?;
    }
    Ok(line)
}

/// Many concurrent clients echo through the edge's sessions, spread over four connections,
/// under loss: each client flow is one session and one origin socket; the sessions of an
/// unreachable destination are refused with `UnableToBindSocket`.
pub(super) fn udp_echo(p: &Params) -> Result<u64, String> {
    let mut s = setup_mapped(p, mappings(DEFAULT_IDLE));
    let c = s.add_connector(HA, s.secret.clone());
    register(&mut s, c)?;
    let n = if p.quick { 300 } else { 10_000 };
    let spread = Duration::from_millis(if p.quick { 500 } else { 5_000 });
    let mut clients = UdpClients::new(&targets(n, true), s.world.now, spread);
    run_clients(&mut s, &mut clients, Duration::from_secs(120), |e, _| {
        e.done()
            && e.clients.iter().all(|c| match c.mapping {
                NOWHERE => c.session.is_none(),
                _ => c.registered,
            })
    })?;
    drain_client_queues(&mut s, &mut clients, c)?;
    if s.lost.is_some() {
        return degraded(&mut s, &[c], hint(DEFAULT_IDLE), clients.bad.len() as u64);
    }
    let (reachable, unreachable): (Vec<_>, Vec<_>) =
        clients.clients.iter().partition(|c| c.mapping == ECHO);
    let w = &s.world;
    let refused: usize = unreachable.iter().map(|c| c.sessions.len()).sum();
    expect(
        unreachable.iter().all(|c| {
            !c.sessions.is_empty()
                && c.session.is_none()
                && c.ended.len() == c.sessions.len()
                && c.refusals().all(|r| r == ResponseCode::UnableToBindSocket)
                && c.refusals().count() == c.ended.len()
        }) && reachable.iter().all(|c| c.ended.is_empty()),
        "only the unreachable destination's sessions are refused, each with UnableToBindSocket",
        w,
    )?;
    let split: Vec<String> = reachable
        .iter()
        .filter(|c| c.sessions.len() != 1)
        .map(|c| format!("{} {:?}", c.addr, c.sessions))
        .collect();
    expect(
        split.is_empty(),
        &format!("one session per client flow: {split:?}"),
        w,
    )?;
    let live = reachable.len();
    expect(
        w.connectors[c].hub().sessions.active() == live
            && w.edge().map(|e| e.sessions().active_sessions()) == Some(live),
        "every reachable session is live, at both ends",
        w,
    )?;
    expect(
        w.udp.sockets() == live && w.udp.stats().sockets_opened == live as u64,
        &format!(
            "one origin socket per session ({} open, {} opened, {live} sessions)",
            w.udp.sockets(),
            w.udp.stats().sockets_opened
        ),
        w,
    )?;
    // A lost refusal brings a retried registration, which dials (and fails) again.
    expect(
        w.connectors[c].hub().sessions.stats().bind_failures >= refused as u64,
        "bind failures counted",
        w,
    )?;
    let line = account_clients(&s, &clients, &[c])?;
    s.world.trace.record(s.world.now, &line);
    Ok(s.world.trace.hash())
}

/// Sessions end on virtual time when idle: the edge's by its idle timer, the connector's by
/// the longer one the edge hints; every origin socket closes, none while in use.
pub(super) fn udp_idle(p: &Params) -> Result<u64, String> {
    let idle = Duration::from_secs(3);
    let hint = hint(idle);
    let mut s = setup_mapped(p, mappings(idle));
    let c = s.add_connector(1, s.secret.clone());
    register(&mut s, c)?;
    let n = 50;
    let mut clients = UdpClients::new(&targets(n, false), s.world.now, Duration::from_millis(100));
    run_clients(&mut s, &mut clients, Duration::from_secs(60), |e, _| {
        e.done()
            && e.clients
                .iter()
                .all(|c| c.registered || c.session.is_none())
    })?;
    if s.lost.is_none() {
        // Sessions that registered early may end before the last one is done: what a user
        // relies on is that none ends while in use, i.e. each origin socket closes only after
        // carrying nothing for the whole hint, and that each does close then.
        run_out_sessions(&mut s, &mut clients, idle, hint)?;
    }
    if s.lost.is_some() {
        return degraded(&mut s, &[c], hint, clients.bad.len() as u64);
    }
    let w = &s.world;
    expect(
        clients.bad.is_empty(),
        &format!("no stray packet or session event: {:?}", clients.bad),
        w,
    )?;
    let wrong: Vec<String> = clients
        .clients
        .iter()
        .filter(|c| c.sessions.len() != 1 || c.ended != [SessionEnd::Idle])
        .map(|c| format!("{} {:?} {:?}", c.addr, c.sessions, c.ended))
        .collect();
    expect(
        wrong.is_empty(),
        &format!("each client flow was one session, ended by the edge's idle timer: {wrong:?}"),
        w,
    )?;
    // A session whose every registration was lost never reached the connector; one that
    // did has exactly one socket there.
    let m = w.connectors[c].hub().sessions.stats();
    let taken = clients.clients.iter().filter(|c| c.was_registered).count() as u64;
    let opened = w.udp.stats().sockets_opened;
    expect(
        opened <= n as u64 && opened >= taken && opened == m.total_flows,
        &format!(
            "one origin socket per session ({opened} opened for {n}, {taken} answered; {m:?})"
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
            "every session ended within {hint:?} (and a second) of its socket's last packet or the edge's end of it ({} open)",
            w.connectors[c].hub().sessions.active()
        ),
        w,
    )?;
    expect(w.udp.sockets() == 0, "every origin socket closed", w)?;
    expect(
        m.idle_closed == m.total_flows,
        "every session opened ended by the idle timer",
        w,
    )?;
    expect(
        w.connectors[c].hub().sessions.poll_timeout().is_none()
            && w.edge()
                .is_some_and(|e| e.sessions().poll_timeout().is_none()),
        "no timer left armed, at either end",
        w,
    )?;
    record_client_stats(&mut s, &clients, c);
    Ok(s.world.trace.hash())
}

/// A connection dies during traffic (its path to the edge is cut): the supervisor re-homes
/// its sessions to the other HA connection, the edge registers them again there at once, and
/// nothing is torn down. The edge spreads the clients' sessions over both connections.
///
/// Every move of a session at the edge has a cause the scenario can name: the connection it
/// was on is A, whose path the scenario cut, or one the connector never registered (its
/// registration answer came after the connector's call timed out, and the connector's close
/// was lost: to the edge such a connection is registered until its idle timeout, like any
/// connection that dies silently, or until the connector registers that index again, which
/// supersedes it). Every session on A when the cut came moved off it.
pub(super) fn udp_migration(p: &Params) -> Result<u64, String> {
    let mut s = setup_mapped(p, mappings(DEFAULT_IDLE));
    let c = s.add_connector(2, s.secret.clone());
    register(&mut s, c)?;
    let limit = s.world.after(super::REGISTER_WITHIN);
    s.world
        .run_ticking(limit, |w, _| Ok(super::serving(w, c).len() == 2))?;
    let live = super::serving(&s.world, c);
    expect(live.len() == 2, "both HA connections serve", &s.world)?;
    let (conn_a, conn_b) = (live[0], live[1]);
    let n = if p.quick { 100 } else { 1_000 };
    let mut clients = UdpClients::new(&targets(n, false), s.world.now, Duration::from_millis(200));
    clients.per_client = 80;
    // The same offered load at both scales, 250 datagrams of ~250 B a second: half of what
    // one connection carries at 10% loss (~1 MSS per RTT / sqrt(loss), ~130 KB/s). At 100 ms
    // apart, 1000 sessions offered 2.5 MB/s: the edge's datagram queue (1 MiB) stayed full,
    // registrations waited in it for seconds, and sessions registered late or had sent
    // everything before the move. This scenario is about migration, not congestion. Above
    // 10% loss a connection carries less (as 1 / sqrt(loss)), so the load is lower by as much:
    // at 25% B alone, after the move, kept the edge's datagram queue full and refused half of
    // what the clients sent.
    let slower = (p.loss / 0.10).sqrt().max(1.0);
    clients.interval = Duration::from_millis(4 * n as u64).mul_f64(slower);
    // Traffic flows on every session before A dies, bounded by half of a client's traffic
    // so that every one is mid-traffic when A dies.
    let mid_traffic = clients.interval * clients.per_client / 2;
    run_clients(&mut s, &mut clients, mid_traffic, |e, _| {
        e.clients.iter().all(|c| c.registered && c.echoed >= 2)
    })?;
    // On a hostile network the edge may time a connection out before the connector does
    // (each side's idle timer runs on what it hears): that connection died, as a cut one does.
    let edge_lost = !(s.world.edge_has(conn_a) && s.world.edge_has(conn_b));
    if s.lost.is_some() || (s.hostile && edge_lost) {
        return degraded(&mut s, &[c], hint(DEFAULT_IDLE), clients.bad.len() as u64);
    }
    let opened = s.world.udp.stats().sockets_opened;
    let pending: Vec<String> = clients
        .clients
        .iter()
        .filter(|c| !c.registered)
        .map(|c| format!("{} {:?}", c.addr, c.sessions))
        .collect();
    expect(
        opened == n as u64,
        &format!(
            "one socket per session ({opened} for {n}); unregistered: {pending:?} {:?} {:?}",
            clients.stats,
            s.world.connectors[c].hub().sessions.stats()
        ),
        &s.world,
    )?;
    let on_a = clients
        .clients
        .iter()
        .filter(|c| c.conn == Some(conn_a))
        .count();
    expect(
        on_a > 0 && on_a < n,
        &format!("the edge spread the sessions over both connections ({on_a} of {n} on A)"),
        &s.world,
    )?;
    // Connection A's path dies: both ends notice by idle timeout. The connector re-homes A's
    // sessions to B; the edge, once it drops A, registers its sessions again on B.
    s.world.partition_index(c, 0, true);
    let was_on_a: Vec<bool> = clients
        .clients
        .iter()
        .map(|c| c.conn == Some(conn_a))
        .collect();
    let before: Vec<u32> = clients.clients.iter().map(|c| c.echoed).collect();
    let rest = clients.interval * clients.per_client + Duration::from_secs(60);
    let (mut edge_moved, mut connector_moved) = (false, false);
    run_clients_with(
        &mut s,
        &mut clients,
        rest,
        &mut |e, _| {
            e.clients
                .iter()
                .all(|c| c.registered && c.sent >= e.per_client)
        },
        |_, h| match h {
            Happening::Edge(edge::Event::ConnectionClosed { conn, .. }) if *conn == conn_a => {
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
    settle_clients(&mut s, &mut clients, Duration::from_secs(2))?;
    if s.lost.is_some() {
        // B died too. The cut of A's path is the scenario's, not the network's: heal it, so
        // that coming back is possible.
        s.world.partition_index(c, 0, false);
        return degraded(&mut s, &[c], hint(DEFAULT_IDLE), clients.bad.len() as u64);
    }
    let w = &s.world;
    expect(
        clients.bad.is_empty(),
        &format!("no stray packet or session event: {:?}", clients.bad),
        w,
    )?;
    expect(edge_moved && connector_moved, "both ends noticed A die", w)?;
    let wrong: Vec<String> = clients
        .clients
        .iter()
        .filter(|c| c.sessions.len() != 1 || !c.ended.is_empty() || c.conn != Some(conn_b))
        .map(|c| format!("{} {:?} {:?} on {:?}", c.addr, c.sessions, c.ended, c.conn))
        .collect();
    expect(
        wrong.is_empty(),
        &format!("each client flow is one session, alive, on B: {wrong:?}"),
        w,
    )?;
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
            clients.stats
        ),
        w,
    )?;
    let hub = w.connectors[c].hub();
    let edge_sessions = w.edge().map(|e| e.sessions().stats().clone());
    expect(
        hub.sessions.active() == n && w.edge().map(|e| e.sessions().active_sessions()) == Some(n),
        "every session lives on, at both ends",
        w,
    )?;
    let silent: Vec<String> = clients
        .clients
        .iter()
        .zip(&before)
        .filter(|(c, b)| c.echoed <= **b)
        .map(|(c, b)| {
            format!(
                "{} sent {} echoed {} (before {b})",
                c.addr, c.sent, c.echoed
            )
        })
        .collect();
    expect(
        silent.is_empty(),
        &format!(
            "every session echoes after the move; silent: {} {:?} {:?} {:?} {edge_sessions:?}",
            silent.len(),
            clients.stats,
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
    let edge_migrated = edge_sessions.map_or(0, |e| e.migrated);
    let moves: Vec<(ConnId, ConnId)> = clients
        .clients
        .iter()
        .flat_map(|c| c.moves.iter().copied())
        .collect();
    let registered = w.connectors[c].history();
    let edge = w.edge().ok_or("edge down")?;
    let never_usable = |conn: ConnId| !registered.contains(&conn) && !edge.is_open(conn);
    let uncaused: Vec<&(ConnId, ConnId)> = moves
        .iter()
        .filter(|(from, _)| *from != conn_a && !never_usable(*from))
        .collect();
    expect(
        uncaused.is_empty() && moves.len() as u64 == edge_migrated,
        &format!(
            "every move of a session left A or a connection the connector never registered \
             ({edge_migrated} counted, {} seen; without such a cause: {uncaused:?}; the connector \
             registered {registered:?})",
            moves.len()
        ),
        w,
    )?;
    let stayed: Vec<SocketAddr> = clients
        .clients
        .iter()
        .zip(&was_on_a)
        .filter(|(c, on_a)| **on_a && !c.moves.iter().any(|(from, _)| *from == conn_a))
        .map(|(c, _)| c.addr)
        .collect();
    expect(
        m.migrated >= on_a as u64 && stayed.is_empty(),
        &format!(
            "A's {on_a} sessions moved off it at both ends (connector counted {}; never moved at the edge: {stayed:?})",
            m.migrated
        ),
        w,
    )?;
    record_client_stats(&mut s, &clients, c);
    Ok(s.world.trace.hash())
}

/// Far more client flows than the connector's flow limit: exactly the limit is served, the
/// rest refused with `TooManyActiveFlows`, and the manager holds no more than the limit. On a
/// hostile network registrations and refusals take so long that the edge's session table
/// (65,536) may fill: a flow it then drops without a session is told so (`SessionsFull`),
/// counted at the edge, and neither served nor refused.
pub(super) fn udp_flood(p: &Params) -> Result<u64, String> {
    let mut s = setup_mapped(p, mappings(DEFAULT_IDLE));
    let (limit, flood) = if p.quick {
        (200, 2_000)
    } else {
        (10_000, 100_000)
    };
    s.max_active_flows = Some(limit as u64);
    let c = s.add_connector(1, s.secret.clone());
    register(&mut s, c)?;
    let spread = Duration::from_millis(if p.quick { 1_000 } else { 20_000 });
    let mut clients = UdpClients::new(&targets(flood, false), s.world.now, spread);
    clients.per_client = 1;
    let mut peak = 0;
    run_clients(&mut s, &mut clients, Duration::from_secs(300), |e, w| {
        peak = peak.max(w.connectors[c].hub().sessions.active());
        e.done()
            && e.clients
                .iter()
                .all(|c| c.was_registered || c.refusals().next().is_some() || c.table_full > 0)
    })?;
    if s.lost.is_some() {
        return degraded(&mut s, &[c], hint(DEFAULT_IDLE), clients.bad.len() as u64);
    }
    let w = &s.world;
    expect(
        clients.bad.is_empty(),
        &format!("no stray packet or session event: {:?}", clients.bad),
        w,
    )?;
    let ok = clients.clients.iter().filter(|c| c.was_registered).count();
    let refused = clients
        .clients
        .iter()
        .filter(|c| c.refusals().eq([ResponseCode::TooManyActiveFlows]))
        .count();
    let table_full = clients
        .clients
        .iter()
        .filter(|c| c.sessions.is_empty() && c.table_full > 0)
        .count();
    let edge_full = w
        .edge()
        .map_or(0, |e| e.sessions().stats().dropped(EdgeDrop::SessionsFull));
    expect(
        table_full as u64 == edge_full && (s.hostile || table_full == 0),
        &format!(
            "a flow without a session was told the edge's table was full, only on a hostile \
             network ({table_full} told, {edge_full} counted)"
        ),
        w,
    )?;
    let split = clients
        .clients
        .iter()
        .filter(|c| c.sessions.len() != 1 && !(c.sessions.is_empty() && c.table_full > 0))
        .count();
    expect(
        split == 0,
        &format!("one session per client flow ({split} split)"),
        w,
    )?;
    expect(ok == limit, &format!("{ok} served, limit {limit}"), w)?;
    expect(
        refused == flood - limit - table_full,
        &format!("{refused} refused ({table_full} dropped, the table full)"),
        w,
    )?;
    expect(
        peak <= limit,
        &format!("peak {peak} sessions held, limit {limit}"),
        w,
    )?;
    expect(w.udp.sockets() == limit, "sockets stay at the limit", w)?;
    record_client_stats(&mut s, &clients, c);
    Ok(s.world.trace.hash())
}

/// Puts the run's counters into the trace, so the fingerprint covers the UDP traffic.
fn record_client_stats(s: &mut Setup, clients: &UdpClients, c: usize) {
    let line = format!(
        "{:?} {:?} {:?} {:?}",
        clients.stats,
        s.world.udp.stats(),
        s.world.connectors[c].hub().sessions.stats(),
        s.world.edge().map(|e| e.sessions().stats())
    );
    s.world.trace.record(s.world.now, &line);
}
