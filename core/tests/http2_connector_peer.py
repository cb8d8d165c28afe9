"""The connector's side of the HTTP/2 transport, written with PyPI's sans-IO `h2`, as an
independent peer for burrow's edge machine (core/tests/http2_python_peer.rs runs it).

Dials the port given with TLS (SNI h2.cftunnel.com, trusting the certificate given, no ALPN),
then serves HTTP/2 as cloudflared does: the control stream echoes its bytes; an HTTP stream is
answered with cloudflared's serialized headers (base64 without padding) and meta; a TCP stream
with the destination from :authority. Exits 0 with "OK" when the edge closed cleanly after
every check held.
"""

import base64
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events

PORT, CERT = int(sys.argv[1]), sys.argv[2]
UPGRADE = "cf-cloudflared-proxy-connection-upgrade"


def b64(text):
    return base64.b64encode(text.encode()).decode().rstrip("=")


def serialize(headers):
    return ";".join(f"{b64(n)}:{b64(v)}" for n, v in headers)


def main():
    ctx = ssl.create_default_context(cafile=CERT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    raw = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    sock = ctx.wrap_socket(raw, server_hostname="h2.cftunnel.com")
    assert sock.selected_alpn_protocol() is None

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    kinds, seen = {}, set()
    while True:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                h = dict(event.headers)
                if h.get(UPGRADE) == "control-stream":
                    kinds[event.stream_id] = "control"
                    conn.send_headers(event.stream_id, [(":status", "200")])
                elif h.get("cf-cloudflared-proxy-src"):
                    kinds[event.stream_id] = "tcp"
                    assert h[":authority"] == "192.0.2.7:5432", h
                    conn.send_headers(event.stream_id, [
                        (":status", "200"), ("cf-cloudflared-response-headers", ""),
                        ("cf-cloudflared-response-meta", '{"src":"origin"}')])
                else:
                    kinds[event.stream_id] = "http"
                    assert (h[":method"], h[":path"], h["x-eyeball"]) == ("GET", "/page", "1"), h
                    assert UPGRADE not in h
                    user = [("Content-Type", "text/html"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                            ("X-Empty", "")]
                    conn.send_headers(event.stream_id, [
                        (":status", "404"), ("content-length", "4"),
                        ("cf-cloudflared-response-headers", serialize(user)),
                        ("cf-cloudflared-response-meta", '{"src":"origin"}')])
                    conn.send_data(event.stream_id, b"nope", end_stream=True)
                seen.add(kinds[event.stream_id])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if kinds[event.stream_id] in ("control", "tcp"):
                    conn.send_data(event.stream_id, b"echo:" + event.data)
            elif isinstance(event, h2.events.StreamEnded):
                if kinds.get(event.stream_id) in ("control", "tcp"):
                    conn.end_stream(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                raise SystemExit(f"stream {event.stream_id} reset: {event.error_code}")
            elif isinstance(event, h2.events.ConnectionTerminated):
                assert event.error_code == 0, event
        sock.sendall(conn.data_to_send())
    assert seen == {"control", "http", "tcp"}, seen
    print("OK", flush=True)


main()
