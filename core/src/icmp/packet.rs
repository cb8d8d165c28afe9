//! Decoding a received IPv4/IPv6 + ICMP packet into a borrowed view, accepting and rejecting
//! exactly what cloudflared's `packet.ICMPDecoder` (gopacket + `x/net/icmp`) does.
//!
//! The rules are written out by hand rather than with etherparse's slicers because gopacket's
//! differ from them in the details that decide acceptance: a total length of 0 means "the whole
//! buffer", truncated packets are fine once the header fits, IPv4 options are checked with
//! gopacket's length rules, and the IPv6 payload is trimmed *after* skipping Hop-by-Hop.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{ParseError, PROTO_ICMPV4, PROTO_ICMPV6};

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const ICMPV4_MIN_LEN: usize = 8;
const ICMPV6_MIN_LEN: usize = 4;
const ICMP_FIXED_LEN: usize = 4;
/// Body bytes `x/net/icmp` requires for types it parses structurally (echo, errors).
const STRUCTURED_BODY_MIN_LEN: usize = 4;
const NEXT_HEADER_HOP_BY_HOP: u8 = 0;
const HOP_BY_HOP_OPT_PAD1: u8 = 0;
const HOP_BY_HOP_OPT_JUMBO: u8 = 0xc2;

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4 carrying ICMPv4.
    V4,
    /// IPv6 carrying ICMPv6.
    V6,
}

impl IpVersion {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// ICMP message body, interpreted per family (v4 types 8/0/11/3, v6 types 128/129/3/1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpMessage<'a> {
    /// Echo request (ICMPv4 8, ICMPv6 128).
    EchoRequest {
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
        /// Data after identifier and sequence number.
        data: &'a [u8],
    },
    /// Echo reply (ICMPv4 0, ICMPv6 129).
    EchoReply {
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
        /// Data after identifier and sequence number.
        data: &'a [u8],
    },
    /// Time exceeded (ICMPv4 11, ICMPv6 3).
    TimeExceeded {
        /// The four header bytes after the checksum (unused / RFC 4884 length).
        rest: u32,
        /// The quoted original datagram (plus any extensions).
        original: &'a [u8],
    },
    /// Destination unreachable (ICMPv4 3, ICMPv6 1).
    DestinationUnreachable {
        /// The four header bytes after the checksum (unused / next-hop MTU / length).
        rest: u32,
        /// The quoted original datagram (plus any extensions).
        original: &'a [u8],
    },
    /// Any other type; the body is everything after the checksum.
    Other {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
        /// Bytes after type, code and checksum.
        body: &'a [u8],
    },
}

/// A decoded IP + ICMP packet borrowing the received bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IcmpPacket<'a> {
    raw: &'a [u8],
    ip_len: usize,
    icmp_offset: usize,
    icmp: &'a [u8],
    version: IpVersion,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    protocol: u8,
    message: IcmpMessage<'a>,
}

impl<'a> IcmpPacket<'a> {
    /// IP version.
    pub fn version(&self) -> IpVersion {
        self.version
    }

    /// Source address.
    pub fn src(&self) -> IpAddr {
        self.src
    }

    /// Destination address.
    pub fn dst(&self) -> IpAddr {
        self.dst
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(&self) -> u8 {
        self.ttl
    }

    /// IPv4 protocol or IPv6 next header as in the fixed header (0 when Hop-by-Hop follows).
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// ICMP type.
    pub fn icmp_type(&self) -> u8 {
        self.icmp_header()[0]
    }

    /// ICMP code.
    pub fn code(&self) -> u8 {
        self.icmp_header()[1]
    }

    /// ICMP checksum as received (never verified, as in cloudflared).
    pub fn checksum(&self) -> u16 {
        let [_, _, hi, lo] = self.icmp_header();
        u16::from_be_bytes([hi, lo])
    }

    /// The ICMP body interpreted per family.
    pub fn message(&self) -> IcmpMessage<'a> {
        self.message
    }

    /// The packet trimmed to its declared length (shorter if it arrived truncated).
    ///
    /// For IPv6 with a Hop-by-Hop header this runs to the end of [`Self::icmp_bytes`], which
    /// (as in gopacket) may extend up to the Hop-by-Hop length past the declared payload.
    pub fn ip_packet(&self) -> &'a [u8] {
        self.raw.get(..self.ip_len).unwrap_or(self.raw)
    }

    /// The ICMP header and body.
    pub fn icmp_bytes(&self) -> &'a [u8] {
        self.icmp
    }

    /// The bytes exactly as received, trailing bytes included (what TTL-exceeded replies quote).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Offset of the ICMP message: IPv4 header with options, or IPv6 header plus Hop-by-Hop.
    pub fn icmp_offset(&self) -> usize {
        self.icmp_offset
    }

    fn icmp_header(&self) -> [u8; 4] {
        // parse() guarantees at least 4 ICMP bytes; zeros are only a panic-free fallback.
        self.icmp.first_chunk().copied().unwrap_or_default()
    }
}

impl fmt::Debug for IcmpPacket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcmpPacket")
            .field("version", &self.version)
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("ttl", &self.ttl)
            .field("protocol", &self.protocol)
            .field("icmp_type", &self.icmp_type())
            .field("code", &self.code())
            .field("checksum", &format_args!("{:#06x}", self.checksum()))
            .field("message", &self.message)
            .finish()
    }
}

/// Decodes an IPv4/IPv6 packet carrying ICMP, validating as cloudflared does (checksums unchecked).
pub fn parse(packet: &[u8]) -> Result<IcmpPacket<'_>, ParseError> {
    let first = *packet.first().ok_or(ParseError::Empty)?;
    match first >> 4 {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        version => Err(ParseError::UnknownVersion { version }),
    }
}

fn parse_v4(packet: &[u8]) -> Result<IcmpPacket<'_>, ParseError> {
    let fixed: &[u8; IPV4_HEADER_LEN] = packet
        .first_chunk()
        .ok_or(ParseError::Ipv4TooShort { len: packet.len() })?;
    let ihl = fixed[0] & 0x0f;
    let mut total = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if total == 0 {
        // Segmentation offload leaves 0 here; gopacket then uses the buffer length as a u16.
        total = packet.len() & 0xffff;
    }
    if total < IPV4_HEADER_LEN {
        return Err(ParseError::Ipv4TotalLengthTooSmall { total });
    }
    if ihl < 5 {
        return Err(ParseError::Ipv4IhlTooSmall { ihl });
    }
    let ihl_bytes = usize::from(ihl) * 4;
    if ihl_bytes > total {
        return Err(ParseError::Ipv4HeaderExceedsTotalLength { ihl_bytes, total });
    }
    // Longer input is trimmed; shorter input is a truncated packet, fine if the header fits.
    let ip = packet.get(..total).unwrap_or(packet);
    let (header, payload) =
        ip.split_at_checked(ihl_bytes)
            .ok_or(ParseError::Ipv4HeaderTruncated {
                ihl_bytes,
                available: ip.len(),
            })?;
    check_v4_options(header.get(IPV4_HEADER_LEN..).unwrap_or_default())?;

    let flags_frag = u16::from_be_bytes([fixed[6], fixed[7]]);
    let more_fragments = flags_frag & 0x2000 != 0;
    let offset = flags_frag & 0x1fff;
    if more_fragments || offset != 0 {
        return Err(ParseError::Ipv4Fragment {
            more_fragments,
            offset,
        });
    }
    let protocol = fixed[9];
    match protocol {
        PROTO_ICMPV4 => {}
        PROTO_ICMPV6 => {
            return Err(ParseError::ProtocolMismatch {
                version: IpVersion::V4,
                protocol,
            })
        }
        _ => {
            return Err(ParseError::NotIcmp {
                version: IpVersion::V4,
                protocol,
            })
        }
    }
    if payload.len() < ICMPV4_MIN_LEN {
        return Err(ParseError::IcmpTooShort {
            version: IpVersion::V4,
            len: payload.len(),
            min: ICMPV4_MIN_LEN,
        });
    }
    let src = Ipv4Addr::from([fixed[12], fixed[13], fixed[14], fixed[15]]);
    let dst = Ipv4Addr::from([fixed[16], fixed[17], fixed[18], fixed[19]]);
    Ok(IcmpPacket {
        raw: packet,
        ip_len: ip.len(),
        icmp_offset: ihl_bytes,
        icmp: payload,
        version: IpVersion::V4,
        src: src.into(),
        dst: dst.into(),
        ttl: fixed[8],
        protocol,
        message: parse_message(IpVersion::V4, payload)?,
    })
}

/// gopacket's IPv4 option walk: End stops, NOP is one byte, others need a length in 3..=remaining.
fn check_v4_options(mut opts: &[u8]) -> Result<(), ParseError> {
    let mut offset = IPV4_HEADER_LEN;
    while let Some((&option_type, tail)) = opts.split_first() {
        let len = match option_type {
            0 => return Ok(()),
            1 => 1,
            _ => {
                let len = usize::from(*tail.first().ok_or(ParseError::Ipv4BadOption {
                    option_type,
                    offset,
                })?);
                if len > opts.len() || len <= 2 {
                    return Err(ParseError::Ipv4BadOption {
                        option_type,
                        offset,
                    });
                }
                len
            }
        };
        opts = opts.get(len..).unwrap_or_default();
        offset += len;
    }
    Ok(())
}

fn parse_v6(packet: &[u8]) -> Result<IcmpPacket<'_>, ParseError> {
    let fixed: &[u8; IPV6_HEADER_LEN] = packet
        .first_chunk()
        .ok_or(ParseError::Ipv6TooShort { len: packet.len() })?;
    let payload_len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    let protocol = fixed[6];
    let after = packet.get(IPV6_HEADER_LEN..).unwrap_or_default();

    let (upper, icmp_offset, region) = if protocol == NEXT_HEADER_HOP_BY_HOP {
        let hbh_len = check_hop_by_hop(after)?;
        if payload_len == 0 {
            return Err(ParseError::Ipv6ZeroPayloadLength);
        }
        let upper = after.first().copied().unwrap_or_default();
        let region = after.get(hbh_len..).unwrap_or_default();
        (upper, IPV6_HEADER_LEN + hbh_len, region)
    } else {
        if payload_len == 0 {
            return Err(ParseError::Ipv6ZeroPayloadLength);
        }
        (protocol, IPV6_HEADER_LEN, after)
    };
    // gopacket trims what follows Hop-by-Hop to the full payload length (Hop-by-Hop included),
    // so the ICMP bytes may run past the declared end; kept for identical acceptance and data.
    let icmp = region.get(..payload_len).unwrap_or(region);

    match upper {
        PROTO_ICMPV6 => {}
        PROTO_ICMPV4 => {
            return Err(ParseError::ProtocolMismatch {
                version: IpVersion::V6,
                protocol: upper,
            })
        }
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => {
            return Err(ParseError::Ipv6ExtensionHeader { next_header: upper })
        }
        _ => {
            return Err(ParseError::NotIcmp {
                version: IpVersion::V6,
                protocol: upper,
            })
        }
    }
    if icmp.len() < ICMPV6_MIN_LEN {
        return Err(ParseError::IcmpTooShort {
            version: IpVersion::V6,
            len: icmp.len(),
            min: ICMPV6_MIN_LEN,
        });
    }
    let src = addr16(fixed, 8);
    let dst = addr16(fixed, 24);
    Ok(IcmpPacket {
        raw: packet,
        ip_len: icmp_offset + icmp.len(),
        icmp_offset,
        icmp,
        version: IpVersion::V6,
        src: Ipv6Addr::from(src).into(),
        dst: Ipv6Addr::from(dst).into(),
        ttl: fixed[7],
        protocol,
        message: parse_message(IpVersion::V6, icmp)?,
    })
}

/// The 16 bytes at `at` (zeros if out of range, which callers rule out beforehand).
fn addr16(b: &[u8], at: usize) -> [u8; 16] {
    b.get(at..)
        .and_then(|s| s.first_chunk())
        .copied()
        .unwrap_or_default()
}

/// Validates a Hop-by-Hop header at the start of `after` as gopacket does; returns its length.
///
/// Options are walked over the *untrimmed* bytes (an option may overrun the header into what
/// follows, as gopacket allows). Jumbograms are rejected outright.
fn check_hop_by_hop(after: &[u8]) -> Result<usize, ParseError> {
    let hdr_len_words = *after.get(1).ok_or(ParseError::Ipv6HopByHopTruncated {
        needed: 2,
        available: after.len(),
    })?;
    let hbh_len = usize::from(hdr_len_words) * 8 + 8;
    if after.len() < hbh_len {
        return Err(ParseError::Ipv6HopByHopTruncated {
            needed: hbh_len,
            available: after.len(),
        });
    }
    let mut offset = 2;
    while offset < hbh_len {
        let opt = after.get(offset..).unwrap_or_default();
        let [opt_type, opt_len] = *opt
            .first_chunk()
            .ok_or(ParseError::Ipv6BadHopByHopOption { offset })?;
        if opt_type == HOP_BY_HOP_OPT_PAD1 {
            offset += 1;
            continue;
        }
        let actual = usize::from(opt_len) + 2;
        if opt.len() < actual {
            return Err(ParseError::Ipv6BadHopByHopOption { offset });
        }
        if opt_type == HOP_BY_HOP_OPT_JUMBO {
            // cloudflared accepts a well-formed jumbogram (and mis-slices it); a tunnel
            // datagram can never need one, so reject it like any other unusable packet.
            return Err(ParseError::Ipv6Jumbogram);
        }
        offset += actual;
    }
    Ok(hbh_len)
}

/// `x/net/icmp.ParseMessage`: types parsed structurally need 4 body bytes; others are raw.
fn parse_message(version: IpVersion, icmp: &[u8]) -> Result<IcmpMessage<'_>, ParseError> {
    let Some((&[icmp_type, code, _, _], body)) = icmp.split_first_chunk::<ICMP_FIXED_LEN>() else {
        return Err(ParseError::IcmpTooShort {
            version,
            len: icmp.len(),
            min: ICMP_FIXED_LEN,
        });
    };
    let structured = match version {
        // Destination unreachable, time exceeded, parameter problem, echo, extended echo.
        IpVersion::V4 => matches!(icmp_type, 0 | 3 | 8 | 11 | 12 | 42 | 43),
        // The same plus packet too big.
        IpVersion::V6 => matches!(icmp_type, 1..=4 | 128 | 129 | 160 | 161),
    };
    let fields = body.split_first_chunk::<STRUCTURED_BODY_MIN_LEN>();
    let Some((&[a, b, c, d], rest)) = fields else {
        if structured {
            return Err(ParseError::IcmpBodyTooShort {
                icmp_type,
                len: body.len(),
            });
        }
        return Ok(IcmpMessage::Other {
            icmp_type,
            code,
            body,
        });
    };
    let id = u16::from_be_bytes([a, b]);
    let seq = u16::from_be_bytes([c, d]);
    let word = u32::from_be_bytes([a, b, c, d]);
    Ok(match (version, icmp_type) {
        (IpVersion::V4, 8) | (IpVersion::V6, 128) => IcmpMessage::EchoRequest {
            id,
            seq,
            data: rest,
        },
        (IpVersion::V4, 0) | (IpVersion::V6, 129) => IcmpMessage::EchoReply {
            id,
            seq,
            data: rest,
        },
        (IpVersion::V4, 11) | (IpVersion::V6, 3) => IcmpMessage::TimeExceeded {
            rest: word,
            original: rest,
        },
        (IpVersion::V4, 3) | (IpVersion::V6, 1) => IcmpMessage::DestinationUnreachable {
            rest: word,
            original: rest,
        },
        _ => IcmpMessage::Other {
            icmp_type,
            code,
            body,
        },
    })
}
