"""The edge's side of the HTTP/2 transport, written with PyPI's sans-IO `h2`, as an independent
peer for burrow's connector machine (core/tests/http2_python_peer.rs runs it).

Listens on loopback with TLS (the certificate given), prints the port, accepts one connection,
and as the HTTP/2 client opens: the control stream (bytes echoed back), an HTTP GET, and a POST
whose body and echoed response are larger than the default 64 KiB windows. Checks the settings
the connector announces (cloudflared's Go server values) and its serialized response headers.
Exits 0 with "OK" when every check held; any failure raises and exits non-zero.
"""

import base64
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings

CERT, KEY = sys.argv[1], sys.argv[2]
UPGRADE = "cf-cloudflared-proxy-connection-upgrade"
CONTROL_BODY = b"capnp bootstrap bytes"
POST_BODY = bytes(i % 253 for i in range(300_000))


def b64(data):
    return base64.b64decode(data + "=" * (-len(data) % 4))


def decode_user_headers(blob):
    pairs = []
    for pair in blob.split(";"):
        if pair:
            name, value = pair.split(":")
            pairs.append((b64(name).decode(), b64(value).decode()))
    return pairs


def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(CERT, KEY)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)
    print(listener.getsockname()[1], flush=True)
    raw, _ = listener.accept()
    raw.settimeout(30)
    sock = ctx.wrap_socket(raw, server_side=True)
    assert sock.version() == "TLSv1.3", sock.version()
    assert sock.selected_alpn_protocol() is None, "no ALPN on the HTTP/2 transport"

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    control = conn.get_next_available_stream_id()
    conn.send_headers(control, [(":method", "GET"), (":scheme", "http"), (":authority", "localhost:8080"),
                                (":path", "/"), (UPGRADE, "control-stream")])
    conn.send_data(control, CONTROL_BODY)
    get = conn.get_next_available_stream_id()
    conn.send_headers(get, [(":method", "GET"), (":scheme", "http"), (":authority", "origin.example"),
                            (":path", "/hello"), ("x-eyeball", "1")], end_stream=True)
    post = conn.get_next_available_stream_id()
    conn.send_headers(post, [(":method", "POST"), (":scheme", "https"), (":authority", "origin.example"),
                             (":path", "/echo")])
    to_post = POST_BODY
    sock.sendall(conn.data_to_send())

    heads, bodies, ended = {}, {control: b"", get: b"", post: b""}, set()
    settings, conn_window_updates = {}, []
    while not ({get, post} <= ended and bodies[control] == b"echo:" + CONTROL_BODY):
        # Send what the connector's windows allow of the POST body.
        if to_post:
            n = min(len(to_post), conn.local_flow_control_window(post), conn.max_outbound_frame_size)
            if n > 0:
                conn.send_data(post, to_post[:n], end_stream=(n == len(to_post)))
                to_post = to_post[n:]
        sock.sendall(conn.data_to_send())
        data = sock.recv(65536)
        if not data:
            raise SystemExit("connector closed early")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            elif isinstance(event, h2.events.WindowUpdated) and event.stream_id == 0:
                conn_window_updates.append(event.delta)
            elif isinstance(event, h2.events.ResponseReceived):
                heads[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                raise SystemExit(f"stream {event.stream_id} reset: {event.error_code}")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise SystemExit(f"connection terminated: {event}")

    # cloudflared's Go server settings (PROTOCOL.md C§1.3).
    S = h2.settings.SettingCodes
    expect = {S.MAX_CONCURRENT_STREAMS: 2**32 - 1, S.MAX_FRAME_SIZE: 1 << 20,
              S.MAX_HEADER_LIST_SIZE: (1 << 20) + 320, S.INITIAL_WINDOW_SIZE: 1 << 20}
    for code, value in expect.items():
        assert settings.get(code) == value, (code, settings)
    # Not Go's 1 MiB connection window (WINDOW_UPDATE 983041): one stream window for the
    # streams that read plus 8 for request bodies an origin does not read (receive_window.rs).
    assert conn_window_updates and conn_window_updates[0] == 9 * (1 << 20) - 65535, conn_window_updates

    # The control stream: implicit 200, no meta, bytes both ways.
    assert heads[control][":status"] == "200", heads[control]
    assert "cf-cloudflared-response-meta" not in heads[control]

    # HTTP: serialized user headers, meta origin, content-length also as a real header.
    h = heads[get]
    assert h[":status"] == "200", h
    assert h["cf-cloudflared-response-meta"] == '{"src":"origin"}', h
    assert h["content-length"] == "2", h
    user = decode_user_headers(h["cf-cloudflared-response-headers"])
    assert ("Content-Type", "text/plain") in user, user
    assert ("X-Origin", "yes") in user, user
    assert ("Content-Length", "2") in user, user
    assert not any(n.lower().startswith("cf-int-") for n, _ in user), user
    assert bodies[get] == b"ok", bodies[get]

    # POST larger than the windows, echoed back larger than ours.
    assert heads[post][":status"] == "200"
    assert bodies[post] == POST_BODY, len(bodies[post])

    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()
    print("OK", flush=True)


main()
