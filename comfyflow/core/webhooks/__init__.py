"""Signed job notifications (Standard Webhooks): outbox in Redis, a watcher of job events, a sender."""

from comfyflow.core.webhooks.outbox import Outbox
from comfyflow.core.webhooks.service import WebhookService, outbox_for
from comfyflow.core.webhooks.signing import Signer, webhook_secret
from comfyflow.core.webhooks.targets import TargetRefused, check_target

__all__ = ["Outbox", "Signer", "TargetRefused", "WebhookService", "check_target", "outbox_for", "webhook_secret"]
