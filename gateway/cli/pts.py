"""`meter-gateway pts ...`: what an installer needs around the PTS uplink, next to the daemon.

- `pts status`  window, chosen reading, quota ledger and last validation per system, from the
                local store only (no API call; safe while the daemon runs).
- `pts submit --system N [--test]`  a manual, quota-checked submission now (`--test`:
                ARPostTest only, nothing saved, no quota), then follows it for `--wait` seconds.
- `pts quota --system N --valid V --failed F --reason TEXT`  records limits the MassCEC help
                desk raised for one system and window (the ledger then allows them).

The daemon may run at the same time: the store's claim (quota check + ledger row in one
SQLite transaction) keeps the two processes from spending the same quota twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.options import add_config_option
from gateway.uplinks.pts import ledger

if TYPE_CHECKING:
    from gateway.clock.clocks import Clock
    from gateway.config.schema import Config
    from gateway.net.session import SessionFactory
    from gateway.uplinks.pts.uplink import PtsUplink

EXIT_CONFIG = 2


def add_parser(commands: Any) -> None:
    """Add `pts` and its sub-commands to the top-level sub-parsers."""
    pts = commands.add_parser("pts", help="MassCEC PTS monthly reading: status, submit, quota")
    sub = pts.add_subparsers(dest="pts_command", required=True)

    status = sub.add_parser("status", help="window, chosen reading, ledger, last validation")
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    submit = sub.add_parser("submit", help="submit one system's reading now (quota-checked)")
    add_config_option(submit)
    submit.add_argument("--system", type=int, required=True, metavar="FK_SYSTEM")
    submit.add_argument("--test", action="store_true", help="ARPostTest only: nothing saved")
    submit.add_argument(
        "--wait", type=float, default=120.0, metavar="SECONDS", help="follow the validation"
    )

    quota = sub.add_parser("quota", help="record a quota the MassCEC help desk raised")
    add_config_option(quota)
    quota.add_argument("--system", type=int, required=True, metavar="FK_SYSTEM")
    quota.add_argument("--valid", type=int, required=True)
    quota.add_argument("--failed", type=int, required=True)
    quota.add_argument("--reason", required=True, help="e.g. the help-desk ticket")
    quota.add_argument("--period", default=None, help="YYYY-MM; default: the open window")


def run(
    args: argparse.Namespace,
    config: Config,
    *,
    clock: Clock | None = None,
    session_factory: SessionFactory | None = None,
) -> int:
    """Run a `pts` sub-command; the exit code (0 ok, 1 refused or failed, 2 config)."""
    if config.uplinks.pts is None:
        print("error: no uplinks.pts section in the config", file=sys.stderr)
        return EXIT_CONFIG
    systems = sorted(system.fk_system for system in config.uplinks.pts.systems.values())
    if args.pts_command in ("submit", "quota") and args.system not in systems:
        known = ", ".join(map(str, systems))
        print(
            f"error: fk_system {args.system} is not configured (systems: {known})", file=sys.stderr
        )
        return EXIT_CONFIG
    return asyncio.run(run_async(args, config, clock=clock, session_factory=session_factory))


async def run_async(
    args: argparse.Namespace,
    config: Config,
    *,
    clock: Clock | None = None,
    session_factory: SessionFactory | None = None,
) -> int:
    """`run` inside a running event loop (tests, or a caller that has one)."""
    from core.health import Health
    from gateway.daemon import open_store
    from gateway.store.async_store import AsyncStore
    from gateway.uplinks.pts.uplink import PtsUplink

    assert config.uplinks.pts is not None
    astore = AsyncStore(open_store(config))
    uplink = PtsUplink(
        config.uplinks.pts,
        store=astore,
        health=Health(),
        clock=clock,
        session_factory=session_factory,
    )
    try:
        if args.pts_command == "status":
            return await _status(uplink, as_json=args.json)
        if args.pts_command == "submit":
            return await _submit(uplink, args.system, test=args.test, wait=args.wait)
        if args.pts_command == "quota":
            return await _quota(uplink, astore, args)
        raise AssertionError(args.pts_command)
    finally:
        await uplink.aclose()
        await astore.aclose()


async def _status(uplink: PtsUplink, *, as_json: bool) -> int:
    report = await uplink.report()
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"PTS {uplink.config.environment} at {uplink.config.api_root}, now {report['now']}")
    upcoming = report["next_window"]
    print(f"next window: {upcoming['period']} opens {upcoming['open']} Eastern")
    for fk, system in report["systems"].items():
        window = system["window"]
        quota = system["quota"]
        reading = system["reading"]
        print(f"\nsystem {fk} (meter {system['meter']}), period {system['period']}")
        print(
            f"  window   {window['open']} until {window['close']} Eastern "
            f"({'open' if window['is_open'] else 'closed'}), submit at {system['submit_at']}"
        )
        print(f"  state    {system['state']}")
        if reading:
            print(f"  reading  {reading['MeterValue']} kWh at {reading['MeterDate']}")
        else:
            print("  reading  none stored in the window")
        override = f" (help desk: {quota['override']})" if quota["override"] else ""
        print(
            f"  quota    {quota['passed']}/{quota['max_valid']} valid, "
            f"{quota['failed']}/{quota['max_failed']} failed, {quota['pending']} pending{override}"
        )
        last = system["last_validation"]
        if last:
            kind = "test" if last["test"] else "submission"
            notes = f": {last['notes']}" if last["notes"] else ""
            detail = f" ({last['detail']})" if last["detail"] and not notes else ""
            print(
                f"  last     {kind} {last['status']}{notes}{detail} "
                f"[{last['MeterValue']} kWh at {last['MeterDate']}, {last['at']}]"
            )
        for problem in system["problems"]:
            print(f"  problem  {problem}")
    return 0


async def _submit(uplink: PtsUplink, fk_system: int, *, test: bool, wait: float) -> int:
    outcome = await uplink.submit(fk_system, test=test)
    _print_outcome(outcome)
    if outcome.get("action") != "submitted" or wait <= 0:
        return 0 if outcome.get("ok") else 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    interval = min(uplink.config.status_poll_secs, 15.0)
    while loop.time() < deadline:
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
        status = await uplink.poll_status(fk_system)
        if status.get("status") in ("passed", "failed", "superseded", "not_received"):
            notes = f": {status['notes']}" if status.get("notes") else ""
            print(f"validation: {status['status']}{notes}")
            return 0 if status["status"] == "passed" else 1
    print("validation: still pending; the daemon follows it up (meter-gateway pts status)")
    return 0


def _print_outcome(outcome: dict[str, Any]) -> None:
    action = outcome.get("action", "error")
    line = f"system {outcome.get('fk_system')}: {action}"
    reading = outcome.get("reading")
    if reading:
        line += f" {reading['MeterValue']} kWh at {reading['MeterDate']}"
    print(line)
    if outcome.get("error"):
        print(f"  {outcome['error']}")
    for problem in outcome.get("problems", ()):
        print(f"  problem: {problem}")
    quota = outcome.get("quota")
    if quota:
        print(
            f"  quota before: {quota['passed']}/{quota['max_valid']} valid, "
            f"{quota['failed']}/{quota['max_failed']} failed"
        )


async def _quota(uplink: PtsUplink, astore: Any, args: argparse.Namespace) -> int:
    from gateway.uplinks.pts.window import Period, window_at

    config = uplink.config
    if args.valid < 1 or args.failed < 1:
        print("error: --valid and --failed must be at least 1", file=sys.stderr)
        return 1
    now_ms = int(uplink.clock.time() * 1000)
    if args.period is not None:
        period = Period.parse(args.period).key
    else:
        window = window_at(now_ms, config.window_days_before, config.window_days_after)
        if window is None:
            print("error: no window is open: give --period YYYY-MM", file=sys.stderr)
            return 1
        period = window.period.key
    await astore.run(
        ledger.record_override,
        args.system,
        period,
        max_valid=args.valid,
        max_failed=args.failed,
        reason=args.reason,
        now_ms=now_ms,
    )
    print(
        f"recorded: system {args.system}, window {period}: {args.valid} valid, "
        f"{args.failed} failed ({args.reason})"
    )
    return 0
