"""Simulators of the testbeds, speaking the real protocols on loopback."""
