"""PiSeduce: reservation and deployment manager for experimental testbeds."""

__version__ = "0.1.0"
