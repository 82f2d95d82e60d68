"""The events a user may be told about, as data: their names (stored in preferences and outbox
rows, sent in webhooks), their labels on the Settings page, and the defaults."""

from __future__ import annotations

from enum import StrEnum


class Notice(StrEnum):
    ACCOUNT_APPROVED = "account_approved"
    DEPLOY_DONE = "deploy_done"
    DEPLOY_FAILED = "deploy_failed"
    SLOT_ENDING = "slot_ending"
    SLOT_ENDED = "slot_ended"
    ADMIN_ACTION = "admin_action"
    NODE_BROKEN = "node_broken"


LABELS: dict[Notice, str] = {
    Notice.ACCOUNT_APPROVED: "My account was approved",
    Notice.DEPLOY_DONE: "A deployment finished (per bin, with each node's connection line)",
    Notice.DEPLOY_FAILED: "A deployment failed (with the reason)",
    Notice.SLOT_ENDING: "My slot ends soon (the warnings below)",
    Notice.SLOT_ENDED: "My slot ended and its nodes were wiped",
    Notice.ADMIN_ACTION: "An administrator acted on my reservation",
    Notice.NODE_BROKEN: "A node I hold went broken",
}

EMAIL = "email"
WEBHOOK = "webhook"
CHANNELS = (EMAIL, WEBHOOK)

DEFAULT_EVENTS = tuple(Notice)
DEFAULT_WARN_MINUTES = (30, 5)
MAX_WARNINGS = 4
MAX_WARN_MINUTES = 7 * 24 * 60
