"""Subcommands of `python -m federation`, one module each."""
