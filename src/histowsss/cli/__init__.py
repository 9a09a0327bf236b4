"""Command-line interface (typer): one small module per command group."""
