"""`pisctl deploy`: the deploy form's values for each reservation, then (`--wait`) one progress
bar per node with its step in words (cli/following.py); exit 1 when any node did not reach
`deployed`. In a bin of several kinds of nodes each `--set` goes to the forms that have its field."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from piseduce.client import calls, forms
from piseduce.client.cli import output
from piseduce.client.cli.booking import BinOpt, KeysArg, select
from piseduce.client.cli.common import JsonOpt, TimeoutOpt, client, parse_values
from piseduce.client.cli.following import follow
from piseduce.client.errors import BadValues
from piseduce.client.sync import Client


def deploy(
    keys: KeysArg = None,
    bin: Annotated[
        str | None,
        typer.Option("--bin", metavar="NAME", help="Every reservation of this bin waiting to deploy."),
    ] = None,
    env: Annotated[
        str | None,
        typer.Option("--env", "-e", metavar="NAME", help="Environment (or firmware) name: `pisctl envs`."),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="KEY=VALUE of the deploy form (repeat; a file field takes @PATH).",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the deployments to their end.")] = False,
    timeout: TimeoutOpt = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Deploy reservations (kadeploy3 -e ENV): --env and --set fill each one's deploy form."""
    pairs = parse_values(sets or [])
    with client() as api:
        targets = select(api, keys, bin)
        plans = plan(api, targets, pairs, env)
        started = [api.send(calls.deploy(k, values)) for k, values in plans]
        if not wait:
            if json_out:
                output.print_json(started)
            else:
                for r in started:
                    output.say(f"deploying: {r.key} ({r.node}); follow it with pisctl wait {r.key}")
            return
        follow(api, [r.key for r in started], timeout, json_out)


def plan(
    api: Client, targets: list[str], pairs: dict[str, Any], env: str | None
) -> list[tuple[str, dict[str, Any]]]:
    """Each reservation's values, every form checked before the first deployment starts (a typo
    deploys nothing). A --set goes to the reservations whose form has its field (a mixed bin: the
    Pis' `environment`, the sensors' `firmware_file`); one that no form has is refused."""
    fields = {k: api.form(k) for k in targets}
    names = {k: {f.name for f in found} for k, found in fields.items()}
    known: set[str] = set().union(*names.values())
    unknown = sorted(set(pairs) - known)
    if unknown:
        have, missing = ", ".join(sorted(known)), ", ".join(unknown)
        if len(targets) == 1:
            raise BadValues(f"{targets[0]}: the deploy form has no field {missing} (its fields: {have})")
        raise BadValues(f"no deploy form of these {len(targets)} reservations has a field {missing} ({have})")
    return [
        (k, forms.fill(fields[k], {n: v for n, v in pairs.items() if n in names[k]}, env, k)) for k in targets
    ]


def wait(
    keys: KeysArg = None,
    bin: BinOpt = None,
    timeout: TimeoutOpt = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Follow deployments already running (after deploy, redeploy or reboot) to their end."""
    with client() as api:
        follow(api, select(api, keys, bin), timeout, json_out)
