"""Grid'5000 REST API emulator (`piseduce sim g5k`): the subset of protocols.md §A that the g5k
driver and python-grid5000 use, served for one site with OAR and Kadeploy state progressions.

`model.G5kSim` is the site, `app.create_app` serves it, `cli.command` is the `sim g5k` command.
The package itself imports nothing, so that no submodule's import goes round through it."""
