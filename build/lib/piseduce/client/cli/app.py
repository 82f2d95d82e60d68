"""`pisctl`: PiSeduce for researchers' scripts and shells, speaking only the web UI's user API.

Named `pisctl` because `piseduce` is the operators' command (agents, web UI, simulators) and `pis`
is taken on PyPI by an unrelated tool that installs a `pis` command; `pisctl` is free there.
"""

from __future__ import annotations

import re
import sys
import warnings
from typing import Any

import typer

try:  # Typer >= 0.2x carries its own copy of Click and raises its exceptions
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover - older Typer on the system Click
    from click import exceptions as cx  # type: ignore[no-redef]

from piseduce.client.cli import account, booking, catalog, deploy, output, slots, ssh
from piseduce.client.cli.common import UsageError
from piseduce.client.errors import AgentsUnavailable, ApiError, BadValues, PiseduceError

app = typer.Typer(
    name="pisctl",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no `<bool>` type column on flags, no boxes
    help="Reserve, deploy and log in to PiSeduce nodes (Raspberry Pi, Grid'5000, FIT IoT-LAB) "
    "from a shell or a script. Start with `pisctl login URL`.",
)
for command in (
    account.login,
    account.logout,
    account.whoami,
    catalog.agents,
    catalog.nodes,
    catalog.schedule,
    booking.reserve,
    deploy.deploy,
    deploy.wait,
    booking.status,
    booking.extend,
    booking.reboot,
    booking.redeploy,
    booking.release,
    catalog.envs,
    ssh.ssh,  # its options go before or after NODE; `--` ends them (what follows is the command)
):
    app.command()(command)
app.command("ssh-config")(ssh.ssh_config)
app.command("next-slot")(slots.next_slot)


def _warn(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """A partial list (an agent did not answer) is one `warning:` line on stderr, naming the agent
    and what to do; stdout (`--json`) stays the list as answered."""
    if issubclass(category, AgentsUnavailable):
        # One command may read several lists (nodes reads reservations and the schedule too):
        # an agent that did not answer is said once, not once per list.
        text = message.agents if isinstance(message, AgentsUnavailable) else str(message)
        said = " ".join(sorted(set(re.findall(r"(?:^|; )([\w.-]+): ", text)))) or text
        if said not in _SAID:
            _SAID.add(said)
            output.say(f"warning: {message}")
    else:
        _SHOW_WARNING(message, category, *_, **__)


_SHOW_WARNING = warnings.showwarning
_SAID: set[str] = set()  # the unanswering agents already named in this run


def main() -> None:
    """One line on any error, never a traceback: exit 2 for the command line's words, 1 otherwise."""
    warnings.showwarning = _warn
    warnings.simplefilter("always", AgentsUnavailable)
    try:
        # standalone_mode=False: Click's usage errors reach us instead of Typer's boxed panel.
        code = app(standalone_mode=False)
    except cx.NoArgsIsHelpError as exc:
        output.out.print(exc.ctx.get_help() if exc.ctx else "", markup=False, highlight=False)
        sys.exit(2)
    except cx.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "pisctl"
        output.say(f"error: {exc.format_message()} ({command} --help)")
        sys.exit(2)
    except typer.Abort:
        output.say("interrupted")
        sys.exit(130)
    except (UsageError, BadValues) as exc:
        output.say(f"error: {exc}")
        sys.exit(2)
    except ApiError as exc:
        output.say(f"error: {exc.sentence()}")
        sys.exit(1)
    except PiseduceError as exc:
        output.say(f"error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        output.say("interrupted")
        sys.exit(130)
    except OSError as exc:
        output.say(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
