"""Raspberry Pi boards: PoE power over SNMP, netboot from per-serial TFTP folders, node work over SSH."""

from piseduce.agent.drivers.raspberry.driver import RaspberryDriver

__all__ = ["RaspberryDriver"]
