"""hal_conformance as a hal plugin: it adds ``hal conformance`` and ``hal lab``
to the command line through the ``register_commands`` hook (entry point
``conformance`` in the ``hal`` group), as any plugin may. Importing this module
imports neither the suite nor a CLI library; the hook does, when the CLI starts."""

from __future__ import annotations

from hal.plugin import hookimpl

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for

HELP = ("Run the conformance models at every precision on every installed backend and judge "
        "them against the fp64 oracle (or goldens).")


def add_conformance(app) -> None:
    """The ``conformance`` command on a typer ``app``; its flags come from :mod:`.options`."""
    from .cli import run_cli
    from .options import typer_command

    typer_command(app, "conformance", run_cli, HELP)


def lab_app():
    """``hal lab devices ADDRESS``: what every node of a Ray cluster has."""
    import typer

    lab = typer.Typer(help="A conformance lab over a Ray cluster (see docs/lab.md).",
                      no_args_is_help=True, rich_markup_mode=None)

    @lab.command("devices")
    def devices(address: str = typer.Argument(..., metavar="ADDRESS",
                                              help="HOST:PORT of the Ray head, or 'local'."),
                as_json: bool = typer.Option(False, "--json", help="Machine-readable output only.")
                ) -> None:
        """Every node of the cluster and its devices, grouped by host."""
        from rich.markup import escape

        from hal import HalError
        from hal.cli import SafeConsole as Console

        from .lab import devices_cli

        try:
            devices_cli(address, as_json, Console())
        except HalError as e:
            Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(e.exit_code) from None

    return lab


@hookimpl
def register_commands(cli) -> None:
    add_conformance(cli)
    cli.add_typer(lab_app(), name="lab")
