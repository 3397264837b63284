"""What backbones, datasets and Hub models share about the Hugging Face Hub: the shape of a repo
id, whether offline mode is on, and whether the Hub can be reached (asked in about two seconds,
so an offline machine fails in one line instead of waiting on retries)."""

from __future__ import annotations

import os
import re
import socket
import threading
from urllib.parse import urlparse

HUB_PROBE_SECONDS = 2.0
REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # NAME or ORG/NAME


def hub_offline() -> bool:
    """True when the Hub is switched off (``HF_HUB_OFFLINE``, read now, not only at import)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """True if the Hub endpoint accepts a TCP connection within ``timeout`` s (DNS included)."""
    from huggingface_hub import constants

    if hub_offline():
        return False
    url = urlparse(constants.ENDPOINT)
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)
