"""Egress probe, run inside a real brig session (crates/brig-cli/tests/egress_e2e.rs).

Every attempt is one entry of a JSON object on stdout: what came back, or
the error class and message. The test decides what counts as allowed or
blocked; this script only reports truthfully.
"""

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import urllib.error
import urllib.request

HOST_PORT = int(sys.argv[1])  # a listener on the host's loopback
RES = {}


def attempt(name, fn):
    try:
        RES[name] = fn()
    except Exception as e:  # noqa: BLE001 - the report is the point
        RES[name] = "error: %s: %s" % (e.__class__.__name__, str(e)[:300])


def no_proxy_env():
    env = dict(os.environ)
    for k in list(env):
        if k.lower().endswith("_proxy"):
            del env[k]
    return env


def urlopen(url, **kw):
    try:
        with urllib.request.urlopen(url, timeout=20, **kw) as r:
            return {"status": r.status, "body": r.read(200).decode("latin-1")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read(600).decode("latin-1"), "rule": e.headers.get("X-Brig-Rule")}


def raw_proxy(request, read=4096):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(request)
    data = s.recv(read)
    s.close()
    return data.decode("latin-1")


def status_line(text):
    return text.split("\r\n", 1)[0]


def sni_mismatch():
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
    head = s.recv(4096).decode("latin-1")
    ctx = ssl.create_default_context()
    try:
        t = ctx.wrap_socket(s, server_hostname="example.com")
        t.close()
        return {"connect": status_line(head), "tls": "handshake completed"}
    except Exception as e:  # noqa: BLE001
        return {"connect": status_line(head), "tls": "error: %s" % e.__class__.__name__}


def udp(addr, payload, timeout=2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.sendto(payload, addr)
    try:
        return "answer: %r" % (s.recvfrom(512)[0][:40],)
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error: %s" % e


def dns_query(name, qtype):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q, ("127.0.0.53", 53))
    a = s.recvfrom(4096)[0]
    return {"rcode": a[3] & 0x0F, "answers": struct.unpack(">H", a[6:8])[0]}


def run(argv, env=None):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    return {"code": p.returncode, "out": p.stdout[-300:], "err": p.stderr[-300:]}


# Allowed, through HTTPS_PROXY (urllib honours it) and transparently (no proxy variables).
attempt("urllib_allowed", lambda: urlopen("https://pypi.org/simple/six/"))
attempt("curl_proxy_allowed", lambda: run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "https://pypi.org/simple/six/"]))
attempt("curl_transparent_allowed", lambda: run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "https://pypi.org/simple/six/"], env=no_proxy_env()))
# Denied and explained.
attempt("urllib_denied", lambda: urlopen("http://example.com/"))
attempt("curl_transparent_denied", lambda: run(["curl", "-sS", "-m", "10", "https://example.com/"], env=no_proxy_env()))
# IP literals and their disguises, through the proxy.
for name, url in [
    ("ip_v4", "http://1.1.1.1/"),
    ("ip_decimal", "http://2130706433/"),
    ("ip_hex", "http://0x7f.1/"),
    ("ip_octal", "http://0177.0.0.1/"),
    ("ip_v6_loopback", "http://[::1]/"),
    ("ip_v4_mapped", "http://[::ffff:127.0.0.1]/"),
    ("metadata", "http://169.254.169.254/latest/meta-data/"),
]:
    attempt(name, lambda url=url: urlopen(url))
attempt("connect_port_22", lambda: status_line(raw_proxy(b"CONNECT pypi.org:22 HTTP/1.1\r\nHost: pypi.org:22\r\n\r\n")))
attempt("connect_host_loopback", lambda: status_line(raw_proxy(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (HOST_PORT, HOST_PORT))))
attempt("host_header_mismatch", lambda: status_line(raw_proxy(b"GET http://pypi.org/simple/ HTTP/1.1\r\nHost: example.com\r\n\r\n")))
attempt("absolute_uri_denied", lambda: status_line(raw_proxy(b"GET http://paste.ee/ HTTP/1.1\r\nHost: paste.ee\r\n\r\n")))
attempt("sni_mismatch", sni_mismatch)
# Around the proxy.
attempt("direct_port_22", lambda: socket.create_connection(("203.0.113.80", 22), timeout=5) and "connected")
attempt("direct_host_loopback", lambda: socket.create_connection(("127.0.0.1", HOST_PORT), timeout=5) and "connected")
attempt("ipv6_global", lambda: socket.create_connection(("2606:4700:4700::1111", 443), timeout=5) and "connected")
attempt("udp_quic", lambda: udp(("203.0.113.80", 443), b"\xc0\x00\x00\x00\x01quic"))
attempt("dns_outside_resolver", lambda: udp(("8.8.8.8", 53), b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x06google\x03com\x00\x00\x01\x00\x01"))
# DNS through brig's resolver.
attempt("dns_allowed", lambda: dns_query("pypi.org", 1))
attempt("dns_denied_name", lambda: dns_query("example.com", 1))
attempt("dns_txt", lambda: dns_query("pypi.org", 16))
attempt("dns_tunnel", lambda: dns_query("aGVsbG8gd29ybGQgdGhpcyBpcyBleGZpbA.pypi.org", 1))

print(json.dumps(RES))
