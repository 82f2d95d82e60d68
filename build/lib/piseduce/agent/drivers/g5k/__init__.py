"""The `g5k` driver (servers of one Grid'5000 site through its REST API): `driver.G5kDriver`, over
access.py, client.py, inventory.py, booking.py, jobs.py, form.py and steps.py. The package imports
nothing itself (no import goes round through it)."""
