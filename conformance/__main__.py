"""``python -m hal_conformance``: ``hal conformance`` without hal's CLI (the same
command, so the same options)."""

from __future__ import annotations

from .commands import HELP, add_conformance


def main(argv: list[str] | None = None) -> int:
    import typer

    app = typer.Typer(add_completion=False, rich_markup_mode=None, help=HELP)
    add_conformance(app)
    try:
        app(argv, prog_name="python -m hal_conformance")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
