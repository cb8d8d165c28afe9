//! The management service's I/O on the loop (core's [`burrow_core::management`] decides
//! everything): a request to the management hostname is an origin flow whose bytes go to the
//! one machine instead of a socket, and whose reads are the machine's answers; while a log
//! stream streams, the log tap queues the loop's own JSON lines for it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burrow_core::management::{ConnId, Management, ManagementConfig, Output};
use bytes::Bytes;

use crate::origin::Key;

/// Log lines waiting for the loop; beyond, the tap drops them (cloudflared's window drops too).
const LOG_QUEUE: usize = 1024;

/// Lines the tap queued: it runs inside whatever logged, on the loop's thread.
type Lines = Arc<Mutex<Vec<Vec<u8>>>>;

/// The service's machine and its connections' flows.
pub struct Service {
    machine: Management,
    conns: HashMap<ConnId, Conn>,
    lines: Lines,
    /// A log stream streams: the tap is set, and `lines` worth a look (otherwise the loop's
    /// turns take no lock).
    listening: bool,
    /// The machine's next timer.
    timer: Option<Instant>,
    /// Connections waiting for the connector's figures.
    wants_metrics: Vec<ConnId>,
    /// Flows with something new to read (bytes or their end).
    touched: Vec<Key>,
}

/// One connection: the flow it answers and the machine's bytes for it.
struct Conn {
    key: Key,
    out: VecDeque<Bytes>,
    /// Bytes handed to the connector and not yet reported written to the machine.
    unacked: usize,
    /// No more bytes come: the flow finishes once `out` is read.
    ended: bool,
}

/// What a flow may read now.
pub enum Read {
    /// Nothing yet.
    Nothing,
    /// These bytes.
    Data(Bytes),
    /// The end of the answer.
    End,
}

impl Service {
    /// The service for `config`; `service_op_ip` is the address whose route gives the
    /// connector's own address for `/host_details`.
    pub fn new(config: ManagementConfig, service_op_ip: &str) -> Self {
        let mut machine = Management::new(config, burrow_os::host::random_u64());
        machine.set_private_ip(burrow_os::host::own_address(service_op_ip));
        Self {
            machine,
            conns: HashMap::new(),
            lines: Arc::new(Mutex::new(Vec::new())),
            listening: false,
            timer: None,
            wants_metrics: Vec::new(),
            touched: Vec::new(),
        }
    }

    /// A new connection, for the flow `key`.
    pub fn open(&mut self, key: Key) -> ConnId {
        let id = self.machine.open();
        self.conns.insert(
            id,
            Conn {
                key,
                out: VecDeque::new(),
                unacked: 0,
                ended: false,
            },
        );
        id
    }

    /// The request's bytes.
    pub fn write(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        self.machine.handle_bytes(now, id, data);
        self.pump(now);
    }

    /// The next thing the flow of `id` reads.
    pub fn read(&mut self, id: ConnId) -> Read {
        let Some(c) = self.conns.get_mut(&id) else {
            return Read::End;
        };
        match c.out.pop_front() {
            Some(b) => {
                c.unacked += b.len();
                Read::Data(b)
            }
            None if c.ended => Read::End,
            None => Read::Nothing,
        }
    }

    /// The connector took what the flow of `id` read last: room for more log lines.
    pub fn consumed(&mut self, now: Instant, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            let n = std::mem::take(&mut c.unacked);
            self.machine.handle_written(id, n);
            self.pump(now);
        }
    }

    /// The proxy's side ended: the machine forgets the connection, and its flow finishes
    /// once what was answered is read.
    pub fn ended(&mut self, id: ConnId) {
        self.machine.handle_closed(id);
        if let Some(c) = self.conns.get_mut(&id) {
            c.ended = true;
            self.touched.push(c.key);
        }
    }

    /// The flow of `id` is gone.
    pub fn forget(&mut self, id: ConnId) {
        self.machine.handle_closed(id);
        self.conns.remove(&id);
    }

    /// When [`Service::tick`] has work: the machine's timer, or now if log lines wait.
    pub fn deadline(&self) -> Option<Instant> {
        if self.listening && self.lines.lock().is_ok_and(|l| !l.is_empty()) {
            return Some(Instant::now());
        }
        self.timer
    }

    /// Hands the queued log lines to the machine and runs its timers if due.
    pub fn tick(&mut self, now: Instant) {
        let lines = if self.listening {
            let taken = self.lines.lock().map(|mut l| std::mem::take(&mut *l));
            taken.unwrap_or_default()
        } else {
            Vec::new()
        };
        let due = self.timer.is_some_and(|t| t <= now);
        if lines.is_empty() && !due {
            return;
        }
        for line in &lines {
            self.machine.handle_log(line);
        }
        if due {
            self.machine.handle_timeout(now);
        }
        self.pump(now);
    }

    /// Connections waiting for [`Service::metrics`].
    pub fn wants_metrics(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.wants_metrics)
    }

    /// The connector's Prometheus exposition for connection `id`.
    pub fn metrics(&mut self, now: Instant, id: ConnId, exposition: &str) {
        self.machine.handle_metrics(id, exposition);
        self.pump(now);
    }

    /// Flows with something new to read since the last call.
    pub fn touched(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.touched)
    }

    /// Takes the machine's outputs until its next timer.
    fn pump(&mut self, now: Instant) {
        loop {
            match self.machine.poll_output(now) {
                Output::Transmit(id, bytes) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.out.push_back(Bytes::from(bytes));
                        self.touched.push(c.key);
                    }
                }
                Output::Close(id) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.ended = true;
                        self.touched.push(c.key);
                    }
                }
                Output::WantMetrics(id) => self.wants_metrics.push(id),
                Output::Listening(on) => {
                    self.listening = on;
                    let lines = self.lines.clone();
                    burrow_os::log::set_log_tap(on.then(|| {
                        Box::new(move |line: &[u8]| {
                            if let Ok(mut l) = lines.lock() {
                                if l.len() < LOG_QUEUE {
                                    l.push(line.to_vec());
                                }
                            }
                        }) as burrow_os::log::LineSink
                    }));
                    if !on {
                        // Lines queued before the last stream stopped go nowhere.
                        if let Ok(mut l) = self.lines.lock() {
                            l.clear();
                        }
                    }
                }
                Output::Timeout(t) => {
                    self.timer = Some(t);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_core::datagram::LinkId;
    use burrow_core::management::token;
    use burrow_core::tunnel::data::FlowId;

    fn service() -> Service {
        let config = ManagementConfig {
            hostname: "management.argotunnel.com".into(),
            diagnostics: true,
            connector_id: uuid::Uuid::nil(),
            label: None,
            host_name: "box".into(),
        };
        Service::new(config, "127.0.0.1:7844")
    }

    fn key() -> Key {
        (LinkId(1), FlowId(2))
    }

    /// Everything the flow of `id` reads until the end, and whether the end came.
    fn drain(s: &mut Service, id: ConnId) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        loop {
            match s.read(id) {
                Read::Data(b) => got.extend_from_slice(&b),
                Read::End => return (got, true),
                Read::Nothing => return (got, false),
            }
        }
    }

    #[test]
    fn a_request_is_answered_then_its_flow_ends_even_after_the_proxys_fin() {
        let now = Instant::now();
        let mut s = service();
        let id = s.open(key());
        let tok = token::forge("tunnel", "account", "alice");
        let head = format!(
            "GET /host_details?access_token={tok} HTTP/1.1\r\nHost: management.argotunnel.com\r\n\r\n"
        );
        // Half the head: nothing yet.
        s.write(now, id, &head.as_bytes()[..10]);
        assert_eq!(drain(&mut s, id), (Vec::new(), false));
        s.write(now, id, &head.as_bytes()[10..]);
        assert!(s.touched().contains(&key()));
        // The proxy's FIN before the answer is read loses nothing.
        s.ended(id);
        let (answer, end) = drain(&mut s, id);
        let answer = String::from_utf8(answer).expect("text");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\"hostname\":\"box\""), "{answer}");
        assert!(answer.contains("\"ip\":\"127.0.0.1\""), "{answer}");
        assert!(end);
        s.forget(id);
        assert!(s.conns.is_empty());
    }

    #[test]
    fn metrics_wait_for_the_connectors_figures() {
        let now = Instant::now();
        let mut s = service();
        let id = s.open(key());
        let tok = token::forge("tunnel", "account", "alice");
        let head = format!("GET /metrics?access_token={tok} HTTP/1.1\r\nHost: m\r\n\r\n");
        s.write(now, id, head.as_bytes());
        assert_eq!(drain(&mut s, id), (Vec::new(), false));
        assert_eq!(s.wants_metrics(), vec![id]);
        assert!(s.wants_metrics().is_empty());
        s.metrics(now, id, "cloudflared_tunnel_ha_connections 4\n");
        let (answer, end) = drain(&mut s, id);
        let answer = String::from_utf8(answer).expect("text");
        assert!(
            answer.ends_with("\r\n\r\ncloudflared_tunnel_ha_connections 4\n"),
            "{answer}"
        );
        assert!(end);
    }

    #[test]
    fn the_services_timer_moves_on_once_run() {
        let now = Instant::now();
        let mut s = service();
        let id = s.open(key());
        s.write(now, id, b"GET /ping HTTP/1.1\r\nHost: m\r\n\r\n");
        let timer = s.deadline().expect("a timer");
        assert!(timer > now);
        s.tick(timer);
        let next = s.deadline().expect("a timer");
        assert!(next > timer, "{next:?} does not move past {timer:?}");
        // Without a stream, a line left in the queue does not make the loop spin.
        s.lines.lock().expect("lock").push(b"{}".to_vec());
        assert_eq!(s.deadline(), Some(next));
    }
}
