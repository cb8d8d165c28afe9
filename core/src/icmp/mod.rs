//! IP/ICMP packets carried in datagrams (placeholder until the ICMP module lands).
