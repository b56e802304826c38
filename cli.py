"""The `dreamgen` command: parses options, calls the library, prints. No logic of its own."""
import click


@click.group()
def cli():
    """dreamgen: illustrated documents in bulk, written and painted by DreamLLM."""


def main():
    cli()
