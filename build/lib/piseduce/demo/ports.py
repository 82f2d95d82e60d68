"""The demo's ports: the web UI's, and the agents', emulators' and switch's around one base port;
checked free before anything starts."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from piseduce.demo.supervisor import DemoError


@dataclass
class Ports:
    webui: int
    base: int

    @property
    def rpi_agent(self) -> int:
        return self.base + 1

    @property
    def g5k_agent(self) -> int:
        return self.base + 2

    @property
    def iot_agent(self) -> int:
        return self.base + 3

    @property
    def gateway(self) -> int:
        """The raspberry agent's SSH gateway (`ssh -J jump@127.0.0.1:PORT`)."""
        return self.base + 4

    @property
    def g5k_sim(self) -> int:
        return self.base + 10

    @property
    def iot_sim(self) -> int:
        return self.base + 11

    @property
    def iot_frontend(self) -> int:
        """The IoT-LAB emulator's SSH (SFTP) frontend."""
        return self.base + 12

    @property
    def snmp(self) -> int:
        return self.base + 20

    def tcp(self) -> dict[str, int]:
        return {
            "web UI": self.webui,
            "raspberry agent": self.rpi_agent,
            "g5k agent": self.g5k_agent,
            "iot-lab agent": self.iot_agent,
            "SSH gateway": self.gateway,
            "Grid'5000 emulator": self.g5k_sim,
            "IoT-LAB emulator": self.iot_sim,
            "IoT-LAB frontend": self.iot_frontend,
        }


def check_ports(ports: Ports) -> None:
    for what, port in ports.tcp().items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise DemoError(
                    f"port {port} (for the {what}) is taken: is another demo running? Stop it, or choose "
                    f"other ports with --webui-port / --base-port"
                ) from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", ports.snmp))
        except OSError:
            raise DemoError(
                f"UDP port {ports.snmp} (the simulated switch) is taken: choose another --base-port"
            ) from None
