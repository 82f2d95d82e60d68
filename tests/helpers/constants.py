"""The constants every test shares: where the checkout is, the agents' bearer token, the web UI's
admin and the passwords the tests type. A test that needs another value says so where it is used."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
TESTS = ROOT / "tests"  # on PYTHONPATH (pyproject's pytest `pythonpath`; subprocess_env for children)

TOKEN = "test-token-0123456789"  # every test agent's `auth_token`
ADMIN_EMAIL = "boss@example.org"  # the web UI's admin in the web UI tests
ADMIN_PASSWORD = "admin-password-1"
USER_PASSWORD = "a-user-password"  # the users the web UI sequences sign up
OS_PASSWORD = "correct horse battery"  # the password a deploy form sets on a Raspberry Pi
ALICE = "alice@example.org"  # the agents' default end user (agent_helpers.headers)
