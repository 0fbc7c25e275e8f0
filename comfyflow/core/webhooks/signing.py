"""Signing per the Standard Webhooks spec (https://www.standardwebhooks.com), with the ``standardwebhooks``
package: headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``).

The secret is ``COMFYFLOW_WEBHOOKS__SECRET`` (``whsec_<base64>``), or one generated once and kept (0600) under
the home folder. Several machines must share one secret: set it explicitly when workers run on more than one.
"""

from __future__ import annotations

import base64
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from comfyflow.settings import Settings

PREFIX = "whsec_"


def webhook_secret(settings: Settings) -> str:
    """The configured secret, or the home folder's generated one (``<home>/keys/webhook.secret``)."""
    if settings.webhooks.secret is not None:
        return settings.webhooks.secret.get_secret_value()
    path = settings.resolved_home / "keys" / "webhook.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(PREFIX + base64.b64encode(secrets.token_bytes(32)).decode())
        tmp.chmod(0o600)
        os.replace(tmp, path) if not path.exists() else tmp.unlink()
    return Path(path).read_text().strip()


class Signer:
    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)

    def headers(self, msg_id: str, body: str, *, now: datetime | None = None) -> dict[str, str]:
        """The three Standard Webhooks headers for ``body``, signed now (each try is signed afresh)."""
        now = now or datetime.now(UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.webhook.sign(msg_id, now, body),
        }
