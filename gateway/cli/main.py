"""The `meter-gateway` command line: run, status, check-config, demo, deadletters, read, scan,
registers, pts."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.config_errors import ConfigError
from gateway import __version__
from gateway.cli import pts as pts_cli
from gateway.cli.options import DEFAULT_CONFIG, add_config_option, output_closed
from gateway.config.loader import NeedSecrets, load_config
from gateway.config.schema import Config, UplinksConfig
from gateway.logsetup import setup_logging

EXIT_CONFIG = 2
#: The secrets each command resolves (gateway.config.loader): only what it uses.
NEEDS_NO_SECRET: NeedSecrets = ()
PTS_SECRETS: NeedSecrets = (("uplinks", "pts"),)
#: Every uplink a config may have (dead letters of one no longer configured are still listed).
UPLINKS = sorted(UplinksConfig.model_fields)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter-gateway",
        description="Read meters, keep every sample, forward it to energy platforms.",
    )
    parser.add_argument("--version", action="version", version=f"meter-gateway {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the gateway daemon")
    add_config_option(run)

    status = commands.add_parser(
        "status", help="is everything arriving? (exit 0 all well, 1 needs attention, 2 config)"
    )
    status.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    status.add_argument("--json", action="store_true", help="print the status document as JSON")

    check = commands.add_parser("check-config", help="validate a config without touching hardware")
    check.add_argument(
        "config", nargs="?", default=None, help=f"the config file (default: {DEFAULT_CONFIG})"
    )
    check.add_argument(
        "-c", "--config", dest="config_option", default=None, metavar="CONFIG", help="the same"
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="a secret that cannot be found is an error, as for `run` (the default when "
        "systemd runs the command); without it, a warning",
    )

    demo = commands.add_parser(
        "demo", help="simulated meters and local fake clouds, end to end, printed live"
    )
    demo.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--interval", type=float, default=5.0, help="meter poll interval, seconds")
    demo.add_argument(
        "--keep",
        type=Path,
        nargs="?",
        const=Path("demo-data"),
        default=None,
        metavar="DIR",
        help="write config, credentials and store to DIR (default: ./demo-data) and keep them; "
        "the simulator answers read/scan while the demo runs and after --seconds, until Ctrl-C",
    )

    dead = commands.add_parser("deadletters", help="list items an uplink parked as undeliverable")
    add_config_option(dead)
    dead.add_argument("--uplink", default=None, help=f"only this uplink ({', '.join(UPLINKS)})")
    dead.add_argument("--stream", default=None, help="only this datapoint / stream")
    dead.add_argument(
        "--requeue",
        nargs="*",
        type=int,
        default=None,
        metavar="ID",
        help="send these parked items again (no ID: all that match --uplink/--stream)",
    )

    read = commands.add_parser("read", help="read one meter now and print its values")
    read.add_argument("meter", help="meter id from the config")
    add_config_option(read)
    read.add_argument("--raw", action="store_true", help="also print the raw registers")

    scan = commands.add_parser("scan", help="find the units answering on a bus, guess models")
    scan.add_argument("bus", help="bus name from the config")
    add_config_option(scan)
    scan.add_argument("--units", type=_units, default="1-247", help="e.g. 1-247 or 1,5,10-12")
    scan.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for each unit (default 0.3; an empty address costs two)",
    )

    registers = commands.add_parser("registers", help="print a register map and its read plan")
    registers.add_argument("model", help="built-in model (e.g. sdm630) or a map file path")
    pts_cli.add_parser(commands)
    return parser


def _units(text: str) -> list[int]:
    from gateway.cli.commissioning import parse_units

    try:
        return parse_units(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load(path: str, need_secrets: NeedSecrets = "all") -> Config:
    """The config, or exit 2 printing every problem; warnings (not unset secrets) printed."""
    try:
        config = load_config(path, need_secrets=need_secrets)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return config


def _check_config(path: str, *, strict: bool) -> int:
    """Strict (every secret found) with --strict, or when systemd runs it (INVOCATION_ID)."""
    strict = strict or bool(os.environ.get("INVOCATION_ID"))
    config = _load(path, "all" if strict else NEEDS_NO_SECRET)
    for problem in config.unset_secrets:
        print(f"warning: {problem}", file=sys.stderr)
    sys.stderr.flush()
    uplinks = [name for name, value in config.uplinks if value is not None]
    unset = len(config.unset_secrets)
    print(
        f"{path}: OK — gateway {config.gateway.id}, {len(config.meters)} meter(s) on "
        f"{len(config.buses)} bus(es), uplinks: {', '.join(uplinks) or 'none'}, "
        f"mqtt: {'yes' if config.mqtt else 'no'}"
        + (f"; {unset} secret(s) not found: the service will not start without them" * bool(unset))
    )
    return 0


def _deadletters(path: str, uplink: str | None, stream: str | None, ids: list[int] | None) -> int:
    from gateway.cli import deadletters as deadletters_cli
    from gateway.daemon import open_store

    if uplink is not None and uplink not in UPLINKS:
        print(f"error: no uplink {uplink!r} (uplinks: {', '.join(UPLINKS)})", file=sys.stderr)
        return EXIT_CONFIG
    config = _load(path, NEEDS_NO_SECRET)
    with open_store(config) as store:
        if ids is None:
            return deadletters_cli.list_letters(store, uplink)
        return deadletters_cli.requeue(config, store, uplink=uplink, stream=stream, ids=ids)


def main(argv: Sequence[str] | None = None) -> int:
    """The command's exit status; output cut short by its reader (`| head`) ends quietly."""
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        return output_closed()
    return status


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.command == "check-config":
        return _check_config(
            args.config_option or args.config or DEFAULT_CONFIG, strict=args.strict
        )
    if args.command == "run":
        from gateway.daemon import run_until_signalled
        from gateway.store.files import StoreUnavailable

        config = _load(args.config)
        try:
            return asyncio.run(run_until_signalled(config))
        except (StoreUnavailable, BaseExceptionGroup) as exc:
            return _store_unavailable(exc)
    if args.command == "status":
        from gateway.cli import status as status_cli

        return status_cli.run(_load(args.config), as_json=args.json)
    if args.command == "demo":
        from gateway.cli.demo import run_demo

        try:
            return asyncio.run(
                run_demo(seconds=args.seconds, interval=args.interval, keep=args.keep)
            )
        except KeyboardInterrupt:
            return 0
    if args.command == "deadletters":
        return _deadletters(args.config, args.uplink, args.stream, args.requeue)
    if args.command in ("read", "scan", "registers"):
        return _commissioning(args)
    if args.command == "pts":
        need = PTS_SECRETS if args.pts_command == "submit" else NEEDS_NO_SECRET
        return pts_cli.run(args, _load(args.config, need))
    raise AssertionError(args.command)


def _store_unavailable(exc: BaseException) -> int:
    """A healthy store out of reach (at start, or its files lost while running): exit
    EXIT_STORE with the reason on stderr; anything else goes on up."""
    from gateway.store.files import StoreUnavailable
    from gateway.store.recovery import EXIT_STORE

    found = exc.subgroup(StoreUnavailable) if isinstance(exc, BaseExceptionGroup) else exc
    if found is None:
        raise exc
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    print(f"error: {found}", file=sys.stderr)
    return EXIT_STORE


def _commissioning(args: argparse.Namespace) -> int:
    """read / scan / registers (gateway.cli.commissioning): exit 0 ok, 1 device failed, 2 config."""
    from gateway.cli import commissioning

    try:
        if args.command == "registers":
            return commissioning.print_map(args.model)
        config = _load(args.config, NEEDS_NO_SECRET)
        if args.command == "read":
            return asyncio.run(commissioning.read_meter(config, args.meter, raw=args.raw))
        timeout = args.timeout or commissioning.DEFAULT_SCAN_TIMEOUT_SECS
        units = args.units if isinstance(args.units, list) else _units(args.units)
        return asyncio.run(commissioning.scan_bus(config, args.bus, units, timeout_secs=timeout))
    except commissioning.CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
