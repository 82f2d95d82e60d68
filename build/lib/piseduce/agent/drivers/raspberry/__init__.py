"""Raspberry Pi boards: PoE power over SNMP, netboot from per-serial TFTP folders, node work over
SSH: `driver.RaspberryDriver`. The package imports nothing itself (no import goes round through it)."""
