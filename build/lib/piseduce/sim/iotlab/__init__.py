"""An emulator of the FIT IoT-LAB REST API for one site (`piseduce sim iotlab`).

`model.Site` is the site (`cli.build_site` makes one), `app.create_app` serves it, `cli.command`
is the `sim iotlab` command. The package itself imports nothing, so that no submodule's import
goes round through it."""
