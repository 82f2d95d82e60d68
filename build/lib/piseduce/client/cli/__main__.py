"""`python -m piseduce.client.cli` is `pisctl`."""

from piseduce.client.cli.app import main

main()
