"""Simulated Raspberry Pi cluster: PoE switch over SNMP, boards over SSH, netboot from a TFTP folder."""

from __future__ import annotations

import os
from pathlib import Path

TEMPLATE = "rpiboot_uboot"
FIRMWARE = ["start.elf", "start4.elf", "fixup.dat", "fixup4.dat", "kernel8.img", "bcm2711-rpi-4-b.dtb",
            "bcm2710-rpi-3-b-plus.dtb"]


def prepare_pimaster(tftp_root: Path, nfs_root: Path, agent_pubkey: str) -> None:
    """What the operator of a real site sets up once (idempotent).

    The NFS-boot template `<tftp_root>/rpiboot_uboot/` (firmware, kernel, a cmdline.txt with
    root=/dev/nfs), the TFTP root's bootcode.bin, and the NFS system's root filesystem, whose
    `root/.ssh/authorized_keys` lets the agent's key in.
    """
    tftp_root, nfs_root = Path(tftp_root), Path(nfs_root)
    template = tftp_root / TEMPLATE
    template.mkdir(parents=True, exist_ok=True)
    (tftp_root / "bootcode.bin").write_bytes(b"PISEDUCE-SIM bootcode.bin (network boot)\n")
    for name in FIRMWARE:
        (template / name).write_bytes(f"PISEDUCE-SIM {name} (NFS boot)\n".encode())
    (template / "config.txt").write_text("# NFS boot\narm_64bit=1\nenable_uart=1\n")
    (template / "cmdline.txt").write_text(
        f"console=serial0,115200 console=tty1 root=/dev/nfs nfsroot=127.0.0.1:{nfs_root.resolve()},vers=4.1,"
        "proto=tcp ro ip=dhcp rootwait elevator=deadline\n"
    )
    etc = nfs_root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hostname").write_text("nfspi\n")
    ssh_dir = nfs_root / "root" / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(nfs_root / "root", 0o700)
    os.chmod(ssh_dir, 0o700)
    keys_file = ssh_dir / "authorized_keys"
    lines = keys_file.read_text().splitlines() if keys_file.exists() else []
    key = agent_pubkey.strip()
    if key and key not in lines:
        lines.append(key)
    keys_file.write_text("".join(line + "\n" for line in lines))
    os.chmod(keys_file, 0o600)
