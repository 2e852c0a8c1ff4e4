"""The coordinator's reverse proxy: the one door hospitals reach, open to the Fleet API only.

Flower's SuperLink (flwr 1.42) serves the Fleet API (``/v1/fleet/``: SuperNodes),
the Control API (``/v1/control/``: ``flwr run``, ``ls``, ``stop``, node
registration), the ServerApp runtime API (``/v1/runtime/``) and ``/docs`` on one
HTTP port, and the Control API has no authentication of its own. So the
SuperLink listens on 127.0.0.1 only, and ``spinefl coordinator start`` puts
nginx (the distribution's package) in front of it on the public address: it
terminates TLS with the coordinator's certificate and forwards ``/v1/fleet/``
and ``/health``, nothing else (every other path: 404, never reaching the
SuperLink). Node authentication (Flower's signed requests, checked by the
SuperLink against the registered public keys) passes through unchanged. An
optional allow-list of hospital addresses (``allow``) is enforced by nginx.

Everything nginx needs lives in ``<coordinator>/proxy/``: its generated
``nginx.conf``, logs, pid file and temporary files. Its access log counts every
request's bytes by node (``server.traffic``).
"""

from __future__ import annotations

import getpass
import os
import shutil
from pathlib import Path
from typing import Any

from tasks.errors import UserError
from tasks.files import write_text

PROXY_DIR = "proxy"
# Request bodies: weights travel as objects (push-object), everything else is small. The
# SuperLink reads a body before it checks the node's signature, so bounds keep an
# unauthenticated sender from making it read much.
MAX_OBJECT, MAX_BODY = "1g", "16m"
# What hospitals may reach (nginx location -> largest body): Flower's Fleet API, the
# health check.
FORWARDED = {"= /v1/fleet/push-object": MAX_OBJECT, "/v1/fleet/": MAX_BODY,
             "= /health": MAX_BODY}
# One line per request, read by ``server.traffic``: when, status, bytes in from the node
# (request line, headers, body), bytes out to it (headers, body), the node's public key
# (Flower's signed-request header; base64 of its PEM), and the path last (it may hold
# spaces).
ACCESS_LOG = "access.log"
TRAFFIC_FORMAT = ("$time_iso8601 $status $request_length $bytes_sent "
                  "$http_flwr_public_key $uri")
# Where distributions install nginx, often outside a user's PATH.
SBIN = "/usr/sbin:/usr/local/sbin"


def nginx_binary() -> str:
    """The nginx executable (PATH, then the distribution's sbin folders); UserError naming
    the package when it is not installed."""
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:{SBIN}")
    if found is None:
        raise UserError("nginx: not installed; the coordinator's proxy needs it (Debian/"
                        "Ubuntu: apt-get install nginx-light)")
    return found


def nginx_config(folder: Path, settings: dict[str, Any]) -> str:
    """nginx.conf for a coordinator folder: TLS on ``bind:port``, only ``FORWARDED`` paths
    passed to the loopback SuperLink (verified against the coordinator's CA)."""
    proxy = folder / PROXY_DIR
    upstream = f"https://127.0.0.1:{settings['superlink_port']}"
    allow = "".join(f"        allow {cidr};\n" for cidr in settings["allow"])
    if allow:
        allow += "        deny all;\n"
    forward = "".join(f"""
        location {path} {{
            client_max_body_size {limit};
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_ssl_trusted_certificate {folder / 'ca.crt'};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
""" for path, limit in FORWARDED.items())
    # A master started as root would hand the workers to "nobody": keep them this user.
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    temporary = "".join(f"    {kind}_temp_path {proxy / 'tmp' / kind};\n"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Written by `spinefl coordinator start` from coordinator.toml, anew on each start.
{user}worker_processes 1;
daemon off;
pid {proxy / 'nginx.pid'};
error_log {proxy / 'error.log'} warn;
events {{ worker_connections 512; }}
http {{
    log_format traffic '{TRAFFIC_FORMAT}';
    access_log {proxy / ACCESS_LOG} traffic;
{temporary}    server_tokens off;
    server {{
        listen {settings['bind']}:{settings['port']} ssl;
        ssl_certificate {folder / 'server.pem'};
        ssl_certificate_key {folder / 'server.key'};
        ssl_protocols TLSv1.2 TLSv1.3;
{allow}{forward}
        location / {{
            return 404;
        }}
    }}
}}
"""


def proxy_command(folder: Path, settings: dict[str, Any]) -> list[str]:
    """Write the proxy's config under ``<folder>/proxy``; the nginx command that runs it in
    the foreground."""
    folder = folder.resolve()
    binary = nginx_binary()
    proxy = folder / PROXY_DIR
    (proxy / "tmp").mkdir(parents=True, exist_ok=True)
    config = write_text(proxy / "nginx.conf", nginx_config(folder, settings))
    return [binary, "-p", str(proxy), "-c", str(config), "-e", str(proxy / "error.log")]
