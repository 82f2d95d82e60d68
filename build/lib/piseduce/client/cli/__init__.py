"""`pisctl`: PiSeduce for researchers' scripts and shells, speaking only the web UI's user API
(the command is assembled in `app.py`; this package imports nothing, so that its modules, which
import each other, make no import cycle through it)."""
