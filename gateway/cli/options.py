"""Command-line pieces every command shares: the config option, and quiet ends of output."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Final

DEFAULT_CONFIG: Final = "/etc/meter-gateway/config.yaml"
#: A command whose reader went away (`| head`, a closed pager): 128 + SIGPIPE, as C tools exit.
EXIT_BROKEN_PIPE: Final = 141


def add_config_option(
    parser: argparse.ArgumentParser, default: str | None = DEFAULT_CONFIG
) -> None:
    """`-c CONFIG`, with what it is and where it is by default in the help."""
    parser.add_argument(
        "-c",
        "--config",
        default=default,
        metavar="CONFIG",
        help=f"the config file (default: {DEFAULT_CONFIG})",
    )


def output_closed() -> int:
    """After BrokenPipeError on stdout: point stdout at /dev/null, so the interpreter's final
    flush fails no more (no traceback), and give the exit status of a cut-off pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE
