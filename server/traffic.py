"""Bytes on the wire between the coordinator and each hospital, from the proxy's access log.

Every request a node makes passes the proxy (``server.proxy``), which logs its time,
the bytes it received from the node (request line, headers, body) and sent back
(headers, body), the Fleet API path and the node's public key (Flower signs every
request and names the key). The key's SHA-256 names the hospital through the admitted
list (``request_key_sha256``). Bytes are HTTP's, inside TLS: the TLS records add a few
percent. Requests the SuperLink or the proxy refused count as ``(refused)`` (their key
header proves nothing); accepted requests signed by a key the list does not name (a
node admitted before spinefl recorded ``request_key_sha256``: admit it again) as
``(unknown key)``.

Paths are grouped by what they carry: ``objects`` (the content of messages: the model's
arrays, metrics, configs; Flower 1.42 moves them as content-addressed objects), ``app``
(the app bundle a node fetches to run a message) and ``control`` (heartbeats, polling,
message envelopes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from pathlib import Path

import pandas as pd

from server.admission import ADMITTED, admitted_nodes
from server.proxy import ACCESS_LOG, PROXY_DIR

KINDS = {"/v1/fleet/push-object": "objects", "/v1/fleet/pull-object": "objects",
         "/v1/fleet/get-fab": "app"}
UNKNOWN = "(unknown key)"
REFUSED = "(refused)"
COLUMNS = ["hospital", "requests", "received_bytes", "sent_bytes", "objects_received_bytes",
           "objects_sent_bytes", "app_received_bytes", "control_bytes"]


def requests(folder: Path) -> pd.DataFrame:
    """One row per logged request: time (UTC), status, in and out bytes, path, kind and
    hospital. Lines in another format (a log from before this one) are skipped."""
    log = folder / PROXY_DIR / ACCESS_LOG
    names = {entry["request_key_sha256"]: entry["name"]
             for entry in admitted_nodes(folder / ADMITTED).values()
             if "request_key_sha256" in entry}  # admitted before spinefl recorded it: unnamed
    rows = []
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        fields = line.split(" ", 5)
        if len(fields) != 6 or not (fields[2].isdigit() and fields[3].isdigit()):
            continue
        try:
            when = datetime.fromisoformat(fields[0])
        except ValueError:
            continue
        refused = not fields[1].startswith(("2", "3"))  # its key header proves nothing
        rows.append({"time": pd.Timestamp(when).tz_convert("UTC"), "status": fields[1],
                     "in_bytes": int(fields[2]), "out_bytes": int(fields[3]),
                     "path": fields[5], "kind": KINDS.get(fields[5], "control"),
                     "hospital": REFUSED if refused else _hospital(fields[4], names)})
    return pd.DataFrame(rows, columns=["time", "status", "in_bytes", "out_bytes", "path",
                                       "kind", "hospital"])


def _hospital(header: str, names: dict[str, str]) -> str:
    """The admitted hospital whose public key a request named."""
    try:
        key = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError):
        return UNKNOWN
    return names.get(hashlib.sha256(key).hexdigest(), UNKNOWN)


def traffic(folder: Path, since: pd.Timestamp | None = None,
            until: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per hospital, the requests between ``since`` and ``until`` (all when None) and their
    bytes: ``received`` is what the hospital received from the coordinator, ``sent`` what it
    sent; ``objects_*`` of them message content, ``app_received`` app bundles, ``control``
    the rest both ways."""
    table = requests(folder)
    if since is not None:
        table = table[table.time >= since]
    if until is not None:
        table = table[table.time <= until]
    rows = []
    for hospital, group in table.groupby("hospital"):
        objects, app = group[group.kind == "objects"], group[group.kind == "app"]
        control = group[group.kind == "control"]
        rows.append({"hospital": hospital, "requests": len(group),
                     "received_bytes": int(group.out_bytes.sum()),
                     "sent_bytes": int(group.in_bytes.sum()),
                     "objects_received_bytes": int(objects.out_bytes.sum()),
                     "objects_sent_bytes": int(objects.in_bytes.sum()),
                     "app_received_bytes": int(app.out_bytes.sum()),
                     "control_bytes": int(control.in_bytes.sum() + control.out_bytes.sum())})
    return pd.DataFrame(rows, columns=COLUMNS)
