"""The ``ecgstream`` command: one sub-command module per verb, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "COMMANDS"]

#: sub-command name -> module under ecgstream.cli (imported lazily, without torch)
COMMANDS = {
    "train": "train",
    "evaluate": "evaluate",
    "score": "score",
    "export": "export",
    "synth": "synth",
    "replay": "replay",
    "run": "run",
}

DESCRIPTION = """\
Streaming anomaly detection for ECG and other time series.

Not a certified medical device: decision support for research and engineering only.
"""

EPILOG = "Each command's --help gives its inputs, outputs, defaults and an example."


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``ecgstream`` parser; with ``only`` a command name, just that sub-command is imported.

    Sub-command modules import their heavy dependencies when they run, and only the named
    command's module is imported here, which keeps ``ecgstream score ...`` start-up short.
    """
    parser = argparse.ArgumentParser(
        prog="ecgstream",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    names = [COMMANDS[only]] if only in COMMANDS else COMMANDS.values()
    for module_name in names:
        try:
            module = importlib.import_module(f"ecgstream.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ecgstream.cli.{module_name}":
                continue  # command not available in this build
            raise
        module.add_parser(sub)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # user-facing errors (RecordError, ModelFileError, ConfigError, ...) without a traceback
        if args.verbose:
            raise
        print(f"ecgstream {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
