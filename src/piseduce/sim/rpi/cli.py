"""`piseduce sim rpi`: run the simulated cluster until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from piseduce.sim.rpi import prepare_pimaster
from piseduce.sim.rpi.cluster import ClusterOptions, RpiCluster


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
    community: Annotated[str, typer.Option(help="SNMP v2c community.")] = "private",
    time_scale: Annotated[float, typer.Option(min=0.01, help="Simulated seconds per real second.")] = 1.0,
    boot_delay: Annotated[float, typer.Option(min=0.0, help="Boot time in simulated seconds.")] = 20.0,
    boot_failure_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    snmp_loss: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    ssh_drop_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed (serials, faults).")] = None,
    switch_vendor: Annotated[SwitchVendor, typer.Option(
        help="Where the switch answers each port's power: cisco (Gauge32 mW at cpeExtPsePortPwrConsumption),"
             " linksys (INTEGER mW at offset 48+port) or dlink (STRING watts).")] = SwitchVendor.cisco,
    inventory_file: Annotated[Path | None, typer.Option(help="Write the inventory JSON here.")] = None,
    agent_pubkey: Annotated[Path | None, typer.Option(
        help="Public key file of the agent: prepares the TFTP template and the NFS root with it.")] = None,
) -> None:
    """A PoE switch (SNMP) and Raspberry Pi boards (SSH) on loopback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = ClusterOptions(
        boards=boards, state_dir=state_dir, tftp_root=tftp_root, nfs_root=nfs_root, snmp_port=snmp_port,
        community=community, time_scale=time_scale, boot_delay=boot_delay,
        boot_failure_rate=boot_failure_rate, snmp_loss=snmp_loss, ssh_drop_rate=ssh_drop_rate, seed=seed,
        switch_vendor=switch_vendor.value,
    )
    if agent_pubkey is not None:
        prepare_pimaster(tftp_root, nfs_root, agent_pubkey.read_text())
    asyncio.run(_serve(opts, inventory_file))


async def _serve(opts: ClusterOptions, inventory_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = RpiCluster(opts)
    await cluster.start()
    try:
        inventory = cluster.inventory()
        if inventory_file is not None:
            tmp = inventory_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(inventory, indent=1))
            tmp.replace(inventory_file)
        sw = inventory["switch"]
        typer.echo(f"switch {sw['name']}: SNMP v2c on {sw['ip']}:{sw['snmp_port']} "
                   f"community {sw['community']}, {sw['port_count']} ports (uplink {sw['master_port']})")
        for b in inventory["boards"]:
            typer.echo(f"  {b['name']}: port {b['port']} {b['model']} serial {b['serial']} "
                       f"ssh {b['ssh_port']}")
        await stop.wait()
    finally:
        await cluster.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
