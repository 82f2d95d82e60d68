"""`piseduce sim rpi`: run the simulated cluster until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from piseduce.cli_files import read_text, usable_folder, writable_file
from piseduce.sim.rpi import prepare_pimaster
from piseduce.sim.rpi.card import parse_speed
from piseduce.sim.rpi.cluster import ClusterOptions, RpiCluster


class BoardMode(enum.StrEnum):
    auto = "auto"
    real = "real"
    in_process = "in-process"


class SwitchVendor(enum.StrEnum):
    """The profiles of switch.VENDORS."""

    cisco = "cisco"
    linksys = "linksys"
    dlink = "dlink"


def command(
    boards: Annotated[int, typer.Option(min=1, max=1000, help="Number of boards.")] = 8,
    state_dir: Annotated[Path, typer.Option(
        help="Cards, host keys and identities (kept across runs).")] = Path("sim-rpi"),
    tftp_root: Annotated[Path, typer.Option(help="The pimaster's TFTP root.")] = Path("sim-rpi/tftpboot"),
    nfs_root: Annotated[Path, typer.Option(help="The NFS system's root filesystem.")] = Path("sim-rpi/nfs"),
    snmp_port: Annotated[int, typer.Option(min=0, max=65535, help="UDP port of the switch (0 = free).")] = 0,
    community: Annotated[str, typer.Option(help="SNMP v1/v2c read-write community.")] = "private",
    time_scale: Annotated[float, typer.Option(min=0.01, help="Simulated seconds per real second.")] = 1.0,
    boot_delay: Annotated[float, typer.Option(min=0.0, help="Boot time in simulated seconds.")] = 20.0,
    boot_failure_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    snmp_loss: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    ssh_drop_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed (serials, faults).")] = None,
    switch_vendor: Annotated[SwitchVendor, typer.Option(
        help="Where the switch answers each port's power: cisco (Gauge32 mW at cpeExtPsePortPwrConsumption),"
             " linksys (INTEGER mW at offset 48+port) or dlink (STRING watts).")] = SwitchVendor.cisco,
    card_speed: Annotated[str, typer.Option(
        help="SD card speed in MB/s: unlimited, realistic (writes spread over 20-40 MB/s across the"
             " boards, reads 44 MB/s, like real cards), W, W1-W2 or W1-W2:R.")] = "unlimited",
    mode: Annotated[BoardMode, typer.Option(
        help="real: each board a Linux host (network namespace, Debian's sshd, the card's root"
             " filesystem) on a private board network; in-process: SSH servers on loopback ports with"
             " a small command set; auto: real when possible (root).")] = BoardMode.auto,
    network: Annotated[str | None, typer.Option(
        help="Board network in the real mode (e.g. 10.42.0.0/24); default: a free /24 of 10.200.0.0/13.")
    ] = None,
    link_mbit: Annotated[float | None, typer.Option(
        min=0.001, help="Each board's link rate in Mbit/s (real mode; default unshaped).")] = None,
    uplink_mbit: Annotated[float | None, typer.Option(
        min=0.001, help="The switch's uplink to this host in Mbit/s (real mode; default unshaped).")] = None,
    link_loss: Annotated[float, typer.Option(
        min=0.0, max=100.0, help="Percent of packets each board's link drops, both ways (real mode).")] = 0.0,
    dhcp_config: Annotated[Path | None, typer.Option(
        help="The dnsmasq file `piseduce agent network-config` wrote (real mode): the boards get their"
             " addresses by DHCP from a dnsmasq run with it, restarted when the file changes.")] = None,
    inventory_file: Annotated[Path | None, typer.Option(help="Write the inventory JSON here.")] = None,
    agent_pubkey: Annotated[Path | None, typer.Option(
        help="Public key file of the agent: prepares the TFTP template and the NFS root with it.")] = None,
) -> None:
    """A PoE switch (SNMP, on loopback) and Raspberry Pi boards (SSH)."""
    try:
        card_write, card_read = parse_speed(card_speed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--card-speed") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = ClusterOptions(
        boards=boards, state_dir=state_dir, tftp_root=tftp_root, nfs_root=nfs_root, snmp_port=snmp_port,
        community=community, time_scale=time_scale, boot_delay=boot_delay,
        boot_failure_rate=boot_failure_rate, snmp_loss=snmp_loss, ssh_drop_rate=ssh_drop_rate, seed=seed,
        switch_vendor=switch_vendor.value, card_write_mbps=card_write, card_read_mbps=card_read,
        mode=mode.value, network=network, link_mbit=link_mbit, uplink_mbit=uplink_mbit, link_loss=link_loss,
        dhcp_config=dhcp_config,
    )
    pubkey = read_text(agent_pubkey, "--agent-pubkey") if agent_pubkey is not None else None
    for folder, option in ((state_dir, "--state-dir"), (tftp_root, "--tftp-root"), (nfs_root, "--nfs-root")):
        usable_folder(folder, option)
    if inventory_file is not None:
        writable_file(inventory_file, "--inventory-file")
    if dhcp_config is not None:  # written later, by `piseduce agent network-config --output`
        writable_file(dhcp_config, "--dhcp-config")
    if pubkey is not None:
        prepare_pimaster(tftp_root, nfs_root, pubkey)
    asyncio.run(_serve(opts, inventory_file))


async def _serve(opts: ClusterOptions, inventory_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = RpiCluster(opts)
    try:
        await cluster.start()
    except (RuntimeError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        inventory = cluster.inventory()
        if inventory_file is not None:
            # It holds the switch's community and v3 pass phrases: readable by its owner only.
            tmp = inventory_file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(inventory, indent=1))
            tmp.replace(inventory_file)
        sw = inventory["switch"]
        typer.echo(cluster.mode_line())
        typer.echo(f"switch {sw['name']}: SNMP v1/v2c/v3 on {sw['ip']}:{sw['snmp_port']} "
                   f"community {sw['community']}, v3 user {sw['v3_user']} (SHA/AES, pass phrases in "
                   f"{opts.state_dir / 'snmp_v3.json'}), {sw['port_count']} ports "
                   f"(uplink {sw['master_port']})")
        for b, board in zip(inventory["boards"], cluster.boards, strict=True):
            typer.echo(f"  {b['name']}: port {b['port']} {b['model']} serial {b['serial']} "
                       f"ssh {b['ip']}:{b['ssh_port']}, card {board.card_speed.describe()}")
        await stop.wait()
    finally:
        await cluster.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
