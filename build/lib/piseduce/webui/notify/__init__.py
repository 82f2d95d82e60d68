"""Notifications: mail over SMTP and signed webhooks, derived from the agents' event feeds
(cursor.py), queued in an outbox (outbox.py) and sent with retries (sender.py)."""
