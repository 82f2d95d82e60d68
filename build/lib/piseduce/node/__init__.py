"""`piseduce-node`: the helper that prepares a board's SD card (same code on a Pi and in the simulator)."""
