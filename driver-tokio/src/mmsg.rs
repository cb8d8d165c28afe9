//! Several datagrams per system call on one UDP socket (`recvmmsg`, `sendmmsg`). The origin
//! sockets of UDP sessions and the edge's mapping sockets carry small datagrams, whose cost is
//! the call, not the copy: one call per datagram each way was most of the connector's system
//! calls on UDP.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockAddr;

/// Datagrams per call. 64 against 16 took the pinned bench's UDP rate from 99k to 120k packets/s
/// (system calls per packet: connector 0.87 -> 0.48, edge 0.44 -> 0.19): a busy socket's
/// queue is taken in one call, so more of it goes out in each QUIC packet.
pub const BATCH: usize = 64;

/// Reused receive slots for [`recv_many`]: `BATCH` buffers of one size, and who sent each.
pub struct RecvSlots {
    /// Allocated at the first read: a daemon that carries no UDP never pays for it.
    storage: Vec<u8>,
    slot: usize,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    /// Slots the last read filled.
    filled: usize,
}

impl RecvSlots {
    /// Slots of `slot` bytes each (a longer datagram is cut, as `recv` cuts it).
    pub fn new(slot: usize) -> Self {
        Self {
            storage: Vec::new(),
            slot,
            lens: [0; BATCH],
            // SAFETY: all-zero bytes are a valid sockaddr_storage (family AF_UNSPEC).
            addrs: unsafe { MaybeUninit::zeroed().assume_init() },
            filled: 0,
        }
    }

    /// What the last [`recv_many`] read: each datagram and its sender (none for a family
    /// other than IPv4/IPv6).
    pub fn received(&self) -> impl Iterator<Item = (&[u8], Option<SocketAddr>)> + '_ {
        (0..self.filled).map(|i| {
            let at = i * self.slot;
            (
                &self.storage[at..at + self.lens[i]],
                socket_addr(&self.addrs[i]),
            )
        })
    }
}

/// Reads up to [`BATCH`] queued datagrams without waiting; how many. `WouldBlock` when none is
/// queued; an error the socket holds (a refused port) comes back as the error of the call.
pub fn recv_many(fd: BorrowedFd<'_>, slots: &mut RecvSlots) -> io::Result<usize> {
    slots.filled = 0;
    let slot = slots.slot;
    if slots.storage.is_empty() {
        slots.storage = vec![0; slot * BATCH];
    }
    let base = slots.storage.as_mut_ptr();
    let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
        // SAFETY: slot i lies within `storage` (BATCH slots of `slot` bytes).
        iov_base: unsafe { base.add(i * slot) }.cast(),
        iov_len: slot,
    });
    let addrs = slots.addrs.as_mut_ptr();
    // SAFETY: all-zero bytes are a valid mmsghdr; every pointer set below is filled in next.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    for (i, (m, iov)) in msgs.iter_mut().zip(iovs.iter_mut()).enumerate() {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        // SAFETY: i < BATCH, the length of `addrs`.
        m.msg_hdr.msg_name = unsafe { addrs.add(i) }.cast();
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: `msgs` holds BATCH headers pointing into `storage` and `addrs`, which outlive
    // the call; MSG_DONTWAIT keeps it from blocking.
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (len, m) in slots.lens.iter_mut().zip(&msgs[..n]) {
        *len = (m.msg_len as usize).min(slot);
    }
    slots.filled = n;
    Ok(n)
}

/// Most datagrams in one segmented send (Linux's `UDP_MAX_SEGMENTS`, 64 on older kernels).
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one segmented send: one IP datagram's payload, less the UDP header.
const MAX_SEGMENTED_BYTES: usize = 65_000;
/// Buffers (one per datagram) in one [`send_many`] call.
const IOVS: usize = 4 * BATCH;
/// Room for one `UDP_SEGMENT` control message (checked against `CMSG_SPACE` in
/// [`send_many`]).
type SegmentCmsg = [u64; 4];

/// Whether the kernel cuts segmented sends on `fd` (UDP GSO, Linux 4.18): sets the socket's
/// default segment size and clears it again, so plain sends stay plain.
pub fn segmenting_supported(fd: BorrowedFd<'_>) -> bool {
    set_udp_option(fd, libc::UDP_SEGMENT, 1200) && set_udp_option(fd, libc::UDP_SEGMENT, 0)
}

/// Asks the kernel to hand the datagrams of one segmented send to `fd` over as one read (UDP
/// GRO, Linux 5.0), their size in a control message; whether it will.
pub fn coalesce_reads(fd: BorrowedFd<'_>) -> bool {
    set_udp_option(fd, libc::UDP_GRO, 1)
}

/// Sets a `SOL_UDP` option of `fd`; whether the kernel took it.
fn set_udp_option(fd: BorrowedFd<'_>, option: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: a valid descriptor and a c_int option value of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_UDP,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Whether a segmented send failed because this socket or route cannot segment it (`EIO`: no
/// checksum offload on older kernels, or IPsec; a segment over the route's MTU: `EINVAL` on
/// older kernels, `EMSGSIZE` on newer ones such as this machine's 6.18).
fn is_segmenting_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
    )
}

/// [`send_many`] on a socket whose route may refuse segmented messages: the refused message
/// and what follows it go again at once, and `max_segment` is lowered for good: below the
/// refused size for a segment over the route's MTU (smaller runs still segment), to 0 for
/// `EIO` (this socket cannot segment at all). Each retry lowers it, so they end; a refused
/// message that was not segmented (a datagram too long for UDP) ends them too.
pub fn send_many_adapting<'a, T>(
    fd: BorrowedFd<'_>,
    items: &'a [T],
    max_segment: &mut usize,
    item: impl Fn(&'a T) -> (Option<SocketAddr>, &'a [u8]),
) -> (usize, Option<io::Error>) {
    let (mut sent, mut error) = send_many(fd, items, *max_segment, &item);
    while let Some(e) = error.as_ref().filter(|e| is_segmenting_error(e)) {
        // The failed call's first message, which starts at `sent`, is the refused one.
        let Some(refused) = items.get(sent) else {
            break;
        };
        let lowered = match e.raw_os_error() {
            Some(libc::EIO) => 0,
            _ => item(refused).1.len().saturating_sub(1),
        };
        if lowered >= *max_segment {
            break; // that message was not segmented: the error is another one
        }
        *max_segment = lowered;
        let (more, e) = send_many(fd, &items[sent..], *max_segment, &item);
        sent += more;
        error = e;
    }
    (sent, error)
}

/// Writes `items` in order without waiting, up to [`BATCH`] messages per call, each datagram
/// its own message; each run of consecutive datagrams to one address and of one size up to
/// `max_segment` (the run's last may be shorter; 0: no runs) goes as one message the kernel
/// cuts back into datagrams (UDP GSO). On loopback a
/// `sendmmsg` of 64 small datagrams delivers each one alone and wakes its reader each time,
/// which then preempts the sender; a segmented message is delivered in one go. `item` gives
/// each one's address (none on a connected socket) and payload. Returns how many were
/// written, and the error that stopped the rest (`WouldBlock` when the buffer is full; a
/// refused segmented message: see [`send_many_adapting`]).
pub fn send_many<'a, T>(
    fd: BorrowedFd<'_>,
    items: &'a [T],
    max_segment: usize,
    item: impl Fn(&'a T) -> (Option<SocketAddr>, &'a [u8]),
) -> (usize, Option<io::Error>) {
    // SAFETY: CMSG_SPACE only computes a size.
    let cmsg_space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    debug_assert!(cmsg_space <= std::mem::size_of::<SegmentCmsg>());
    let mut sent = 0;
    while sent < items.len() {
        let mut names: [Option<SockAddr>; BATCH] = std::array::from_fn(|_| None);
        // SAFETY: all-zero bytes are valid iovec, mmsghdr and cmsg buffer values; pointers
        // are set below.
        let mut iovs: [libc::iovec; IOVS] = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut cmsgs: [SegmentCmsg; BATCH] = [[0; 4]; BATCH];
        // Per message: its first buffer, its datagrams and their size.
        let mut runs = [(0usize, 0usize, 0usize); BATCH];
        let (mut n, mut niov, mut i) = (0, 0, sent);
        while i < items.len() && n < BATCH && niov < IOVS {
            let (to, first) = item(&items[i]);
            let size = first.len();
            let mut j = i + 1;
            if size > 0 && size <= max_segment {
                let mut bytes = size;
                while j < items.len() && j - i < MAX_SEGMENTS && niov + (j - i) < IOVS {
                    let (next_to, p) = item(&items[j]);
                    // An empty datagram cannot be a segment: it would vanish.
                    if next_to != to || p.is_empty() || p.len() > size {
                        break;
                    }
                    bytes += p.len();
                    if bytes > MAX_SEGMENTED_BYTES {
                        break;
                    }
                    j += 1;
                    if p.len() < size {
                        break; // a shorter datagram ends its run
                    }
                }
            }
            for (iov, k) in iovs[niov..].iter_mut().zip(i..j) {
                let p = item(&items[k]).1;
                iov.iov_base = p.as_ptr() as *mut libc::c_void;
                iov.iov_len = p.len();
            }
            names[n] = to.map(SockAddr::from);
            runs[n] = (niov, j - i, size);
            niov += j - i;
            n += 1;
            i = j;
        }
        let iov_base = iovs.as_mut_ptr();
        for (k, m) in msgs.iter_mut().enumerate().take(n) {
            let (first, count, size) = runs[k];
            // SAFETY: first + count <= niov <= IOVS.
            m.msg_hdr.msg_iov = unsafe { iov_base.add(first) };
            m.msg_hdr.msg_iovlen = count;
            if let Some(name) = &names[k] {
                m.msg_hdr.msg_name = name.as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = name.len();
            }
            if count > 1 {
                m.msg_hdr.msg_control = cmsgs[k].as_mut_ptr().cast();
                m.msg_hdr.msg_controllen = cmsg_space;
                // SAFETY: the header points at a zeroed buffer of at least CMSG_SPACE(2)
                // bytes, so CMSG_FIRSTHDR is within it and has room for a u16.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
                }
            }
        }
        // SAFETY: the first `n` headers point at live payloads, addresses and control
        // buffers; MSG_DONTWAIT keeps the call from blocking.
        let done = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if done < 0 {
            return (sent, Some(io::Error::last_os_error()));
        }
        if done == 0 {
            break; // not done by Linux for n > 0; no progress either way
        }
        // A short count is followed by another call, which sends on or says what stopped it.
        sent += runs[..done as usize].iter().map(|r| r.1).sum::<usize>();
    }
    (sent, None)
}

/// The address in `s`, if IPv4 or IPv6.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it holds a sockaddr_in, which fits in the storage.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it holds a sockaddr_in6, which fits in the storage.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_batch_goes_out_in_order_and_comes_back_with_its_senders() {
        for ip in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(rx) = UdpSocket::bind(ip) else {
                continue; // no IPv6 here
            };
            let tx = UdpSocket::bind(ip).expect("bind");
            let to = rx.local_addr().expect("addr");
            // More than one call's worth, of different sizes.
            let sent: Vec<Vec<u8>> = (0..BATCH + 3).map(|i| vec![i as u8; i + 1]).collect();
            let (n, e) = send_many(tx.as_fd(), &sent, 0, |p| (Some(to), &p[..]));
            assert!(e.is_none(), "{e:?}");
            assert_eq!(n, sent.len());
            let mut slots = RecvSlots::new(BATCH + 8);
            let mut got = Vec::new();
            while got.len() < sent.len() {
                match recv_many(rx.as_fd(), &mut slots) {
                    Ok(_) => got.extend(slots.received().map(|(d, from)| {
                        assert_eq!(from, Some(tx.local_addr().expect("addr")));
                        d.to_vec()
                    })),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    Err(e) => panic!("recvmmsg: {e}"),
                }
            }
            assert_eq!(got, sent);
            assert_eq!(
                recv_many(rx.as_fd(), &mut slots).unwrap_err().kind(),
                io::ErrorKind::WouldBlock,
                "drained"
            );
        }
    }

    #[test]
    fn segmented_sends_arrive_as_the_datagrams_queued() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let to: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().expect("addr")).collect();
        // Runs longer than a message's segments, a shorter datagram ending a run, an empty
        // one, a longer one after a run, and addresses alternating.
        let mut items: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for i in 0..150u8 {
            items.push((to[0], vec![i; 64]));
        }
        items.push((to[0], vec![1; 10]));
        items.push((to[0], vec![2; 64]));
        items.push((to[0], Vec::new()));
        items.push((to[0], vec![3; 64]));
        items.push((to[0], vec![4; 900]));
        for i in 0..10u8 {
            items.push((to[usize::from(i % 2)], vec![i; 64]));
        }
        for segment in [true, false] {
            let segment = segment && segmenting_supported(tx.as_fd());
            let max_segment = if segment { usize::MAX } else { 0 };
            let (n, e) = send_many(tx.as_fd(), &items, max_segment, |(a, p)| (Some(*a), &p[..]));
            assert!(e.is_none(), "{e:?}");
            assert_eq!(n, items.len());
            for (r, addr) in rx.iter().zip(&to) {
                let want: Vec<&Vec<u8>> = items
                    .iter()
                    .filter(|(a, _)| a == addr)
                    .map(|(_, p)| p)
                    .collect();
                r.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .expect("timeout");
                let mut buf = [0u8; 2048];
                for (k, w) in want.iter().enumerate() {
                    let (len, from) = r.recv_from(&mut buf).expect("datagram");
                    assert_eq!(from, tx.local_addr().expect("addr"));
                    assert_eq!(&buf[..len], &w[..], "datagram {k} (segmented: {segment})");
                }
            }
        }
    }

    /// On a route whose MTU a run's segments exceed (loopback at 1280 bytes in a network
    /// namespace of the test's own thread), the refused run goes again plainly, and only sizes
    /// from the refused one up stop segmenting. Skips where namespaces or `ip` are not at hand.
    #[test]
    fn a_route_refusing_large_segments_lowers_the_limit_and_loses_nothing() {
        let run = || -> Option<usize> {
            // SAFETY: unshare(CLONE_NEWNET) moves only this thread to a new network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            // A child inherits the namespace of the thread that spawns it.
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "mtu", "1280", "up"])
                .status();
            if !up.is_ok_and(|s| s.success()) {
                return None;
            }
            let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            if !segmenting_supported(tx.as_fd()) {
                return None;
            }
            let to = rx.local_addr().expect("addr");
            // Runs too large to segment on this route, one small enough between them.
            let items: Vec<Vec<u8>> = [1400, 200, 1400]
                .iter()
                .enumerate()
                .flat_map(|(k, &size)| (0..5u8).map(move |i| vec![k as u8 * 10 + i; size]))
                .collect();
            let mut max_segment = usize::MAX;
            let (n, e) =
                send_many_adapting(tx.as_fd(), &items, &mut max_segment, |p| (Some(to), &p[..]));
            assert!(e.is_none(), "{e:?}");
            assert_eq!(n, items.len());
            rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 2048];
            for (k, want) in items.iter().enumerate() {
                let len = rx.recv(&mut buf).expect("datagram");
                assert_eq!(&buf[..len], &want[..], "datagram {k}");
            }
            Some(max_segment)
        };
        match std::thread::spawn(run).join().expect("the test's thread") {
            Some(max_segment) => assert_eq!(max_segment, 1399, "only 1400-byte runs go plainly"),
            None => eprintln!("skipped: no network namespace, `ip` or UDP segmenting here"),
        }
    }

    #[test]
    fn a_connected_socket_sends_without_addresses_and_cuts_long_reads() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = burrow_os::open_udp(rx.local_addr().expect("addr")).expect("connected");
        let long = [7u8; 100];
        let (n, e) = send_many(tx.as_fd(), &[long], 0, |p| (None, &p[..]));
        assert!(e.is_none(), "{e:?}");
        assert_eq!(n, 1);
        let mut slots = RecvSlots::new(10);
        rx.set_nonblocking(false).expect("blocking");
        let mut one = [0u8; 1];
        rx.peek(&mut one).expect("arrived");
        assert_eq!(recv_many(rx.as_fd(), &mut slots).expect("read"), 1);
        let (d, _) = slots.received().next().expect("one");
        assert_eq!(d, &long[..10], "cut at the slot size");
    }
}
