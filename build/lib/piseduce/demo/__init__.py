"""`piseduce demo` (command.py): the whole testbed on loopback, in one folder, started in named
phases (phases.py) by a supervisor of child processes (supervisor.py)."""
