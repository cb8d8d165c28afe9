//! RFC 1071 Internet checksums as cloudflared computes them: the IPv4 header checksum, the
//! ICMPv4 checksum over the message, and the ICMPv6 checksum over an IPv6 pseudo-header plus
//! the message. A computed 0 stays 0 (no 0xffff substitution), as in Go's `icmp.Marshal`.

use core::net::Ipv6Addr;

use etherparse::checksum::Sum16BitWords;

use super::PROTO_ICMPV6;

/// One's complement of the one's-complement sum of `data` (odd length padded with a zero byte).
///
/// With the checksum field zeroed this is the value to store; over data whose checksum is
/// correct it is 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(Sum16BitWords::new().add_slice(data))
}

/// ICMPv6 checksum of `msg` sent from `src` to `dst` (RFC 8200 §8.1 pseudo-header, next header 58).
///
/// Same convention as [`internet_checksum`]: zero the checksum field first to get the value to
/// store; a correct message yields 0.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    // Message lengths are bounded by memory; an ICMPv6 message over 4 GiB cannot exist, and the
    // saturated value only changes the checksum of such a nonsensical input.
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    let sum = Sum16BitWords::new()
        .add_slice(&src.octets())
        .add_slice(&dst.octets())
        .add_slice(&len.to_be_bytes())
        .add_slice(&[0, 0, 0, PROTO_ICMPV6])
        .add_slice(msg);
    finish(sum)
}

/// Final complement, converted so that `to_be_bytes()` gives the wire bytes.
fn finish(sum: Sum16BitWords) -> u16 {
    // etherparse sums native-endian words; `to_be` converts the result back to a wire value.
    sum.ones_complement().to_be()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2, complement 220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(internet_checksum(&[0x12]), !0x1200);
        assert_eq!(internet_checksum(&[]), 0xffff);
    }

    #[test]
    fn cloudflared_icmpv6_vector() {
        // cloudflared packet/packet_test.go: echo request, ID 0x20a7, seq 8 → checksum 0xff96.
        let src: Ipv6Addr = "2606:4700:110:89c1:c63a:861:e08c:b049".parse().unwrap();
        let dst: Ipv6Addr = "fde8:b693:d420:109b::2".parse().unwrap();
        let msg = [
            128, 0, 0, 0, 0x20, 0xa7, 0x00, 0x08, 0x63, 0x2c, 0x49, 0xd6, 0x00, 0x0d, 0xc1, 0xda,
        ];
        assert_eq!(icmpv6_checksum(src, dst, &msg), 0xff96);
        let mut with_sum = msg;
        with_sum[2..4].copy_from_slice(&0xff96u16.to_be_bytes());
        assert_eq!(icmpv6_checksum(src, dst, &with_sum), 0);
    }
}
