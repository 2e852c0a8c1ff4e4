"""systemd units for the long-running commands: the coordinator's ``coordinator start``
and a hospital's ``hospital join``, each as a dedicated system user.

The unit runs the command in the foreground, as a person would: systemd's SIGTERM
(``KillMode=mixed``) reaches spinefl only, which stops everything it started
(``tasks.stops``); whatever is left after ``TimeoutStopSec`` gets SIGKILL. A command
that ends by itself with an error (a Flower process died) is restarted after 10 s,
at most 5 times in 5 minutes. The file system is read-only to it except its own
folder (``ProtectSystem=strict``, ``ReadWritePaths``), its /tmp is private, and it
gains no privileges; a port below 1024 gets only ``CAP_NET_BIND_SERVICE``. Nothing
reports home (``tasks.processes.QUIET`` in its environment).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from tasks.errors import UserError
from tasks.processes import QUIET

DEFAULT_USER = "spinefl"


def systemd_unit(name: str, description: str, command: list[str], user: str,
                 writable: list[Path], low_port: bool = False) -> str:
    """The text of ``<name>.service``, to be written in ``writable[0]`` (its working folder):
    ``command`` (absolute paths) run as ``user``, able to write only ``writable``."""
    if not user or any(c in user for c in " :/\n"):
        raise UserError(f"--user '{user}': not a user name")
    folder = writable[0]
    install = [f"useradd --system --home-dir {shlex.quote(str(folder))} --shell "
               f"/usr/sbin/nologin {user}    # once, if the user does not exist",
               *(f"chown -R {user}: {shlex.quote(str(path))}" for path in writable),
               f"cp {shlex.quote(str(folder / (name + '.service')))} /etc/systemd/system/",
               f"systemctl daemon-reload && systemctl enable --now {name}",
               f"journalctl -u {name} -f    # its output"]
    capabilities = "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" if low_port else ""
    return f"""# Written by spinefl on {time.strftime('%Y-%m-%d')}. Install, as root:
{''.join(f'#   {line}' + chr(10) for line in install)}
[Unit]
Description={description}
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=exec
User={user}
Group={user}
WorkingDirectory={folder}
ExecStart={shlex.join(command)}
Restart=on-failure
RestartSec=10
KillMode=mixed
TimeoutStopSec=90
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={' '.join(str(path) for path in writable)}
{capabilities}Environment=PYTHONUNBUFFERED=1 {' '.join(f'{k}={v}' for k, v in QUIET.items())}

[Install]
WantedBy=multi-user.target
"""
