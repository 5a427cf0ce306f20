"""The `unlocker` command line: main.py (entry point, errors to exit codes), common.py (the typer app and
shared options), and one module per command family. May import every other layer; nothing imports it."""
