"""Client side of the broker's control socket (/run/unlocker/control.sock): one JSON line each way."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from unlocker.config import RUN_DIR
from unlocker.errors import UnlockerError

CONTROL_SOCKET = RUN_DIR / "control.sock"


class BrokerUnavailable(UnlockerError):
    pass


def request(command: str, timeout: float | None = 30, socket_path: Path = CONTROL_SOCKET,
            secret: bytearray | None = None, **fields: object) -> dict[str, object]:
    """Send one command; `secret` (a key) follows the JSON line as raw bytes, never inside the JSON."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(socket_path))
        except FileNotFoundError:
            raise BrokerUnavailable("the broker is not running (start unlocker.service)") from None
        except PermissionError:
            raise BrokerUnavailable(f"cannot connect to {socket_path}: permission denied (run as root)") from None
        except OSError as e:
            raise BrokerUnavailable(f"cannot connect to {socket_path}: {e.strerror}") from None
        if secret is not None:
            fields["secret_bytes"] = len(secret)
        s.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")
        if secret is not None:
            s.sendall(secret)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, object] = json.loads(data or b'{"ok": false, "error": "no reply"}')
    if not reply.get("ok"):
        raise UnlockerError(f"broker: {reply.get('error')}")
    return reply
