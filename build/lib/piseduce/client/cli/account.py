"""`pisctl login`, `logout`, `whoami`: the web UI's address and a personal access token."""

from __future__ import annotations

import getpass
import ipaddress
import sys
from typing import Annotated
from urllib.parse import urlsplit

import typer

from piseduce.client.cli import credentials, output
from piseduce.client.cli.common import JsonOpt, UsageError, client
from piseduce.client.errors import ApiError, PiseduceError
from piseduce.client.sync import Client
from piseduce.client.transport import api_base

TOKEN_HELP = "Create one in the web UI: Settings → API tokens."  # noqa: S105 - words, not a secret


def read_token() -> str:
    """The token from standard input (a pipe or a file: `pisctl login URL < token`), or asked for
    without echo on a terminal; never from the command line."""
    if sys.stdin is not None and not sys.stdin.isatty():
        token = sys.stdin.readline().strip()
    else:
        token = getpass.getpass("Token (not shown): ").strip()
    if not token:
        raise UsageError(f"no token given: paste it at the prompt or pipe it in. {TOKEN_HELP}")
    return token


def check_scheme(url: str, allow_http: bool) -> None:
    """A token sent in clear over the network is as good as published: plain http only to this
    machine (the demo) unless asked for."""
    parts = urlsplit(url.strip())
    if parts.scheme != "http" or allow_http:
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"{url} is plain http: the token would cross the network in clear; use https:// "
            "(or --allow-http on a network you trust)"
        )


def login(
    url: Annotated[str, typer.Argument(help="The web UI's address, e.g. https://piseduce.example.org")],
    allow_http: Annotated[
        bool, typer.Option("--allow-http", help="Accept plain http to another machine than this one.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Log in: the token is read from standard input (or asked for, not shown), checked, saved 0600."""
    check_scheme(url, allow_http)
    try:
        api_base(url)  # a malformed address is said before the token is asked for
    except PiseduceError as exc:
        raise UsageError(str(exc)) from None
    token = read_token()
    with Client(url, token) as api:
        try:
            me = api.me()
        except ApiError as exc:
            if exc.status in (401, 403):
                raise UsageError(f"the web UI refused this token ({exc.detail}). {TOKEN_HELP}") from None
            raise
    path = credentials.save(credentials.Login(url.strip().rstrip("/"), token))
    if json_out:
        output.print_json(me)
        return
    output.say(f"Logged in to {url} as {me.email} ({me.role}); token saved in {path}")


def logout(json_out: JsonOpt = False) -> None:
    """Forget the saved token (revoke it in Settings too if it may have leaked)."""
    removed = credentials.forget()
    if json_out:
        output.print_json({"removed": removed, "path": str(credentials.credentials_path())})
    elif removed:
        output.say(f"Removed {credentials.credentials_path()}")
    else:
        output.say("Not logged in: nothing to remove.")


def whoami(json_out: JsonOpt = False) -> None:
    """Who the saved token acts as."""
    with client() as api:
        me = api.me()
    if json_out:
        output.print_json(me)
    else:
        output.out.print(f"{me.email} ({me.role}) on {api.base}")
