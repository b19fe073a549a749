"""GetSystems: which configured PTS systems are active, and their capacity.

Asked at start and every systems_check_secs (gateway.uplinks.pts.uplink schedules it). A
system that is unknown, inactive or has an `Error` is reported once when it becomes so, and
nothing is submitted for it while it stays so (SystemState.active is then False).
"""

from __future__ import annotations

from gateway.uplinks.pts.state import PtsContext, log


async def check_systems(ctx: PtsContext, now: int) -> None:
    """Ask GetSystems about every configured system and update their state."""
    infos = await ctx.client.get_systems([system.fk for system in ctx.systems])
    for system in ctx.systems:
        info = infos.get(system.fk)
        was = system.active
        if info is None or info.error is not None:
            system.active = False
            system.error = (
                info.error
                if info is not None and info.error
                else "not among the organisation's active systems (GetSystems)"
            )
            if was is not False:
                ctx.alert(
                    f"PTS system {system.fk} (meter {system.meter}) is unknown or inactive: "
                    f"{system.error}. Nothing is submitted for it; check fk_system and the "
                    "API key's organisation with the MassCEC help desk",
                )
        else:
            system.active = True
            system.error = None
            system.system_id, system.name = info.system_id, info.name
            system.pts_capacity_kw = info.capacity_kw
            if was is not True:
                log.info(
                    "%s: system %d (%s %s) is active, capacity %s kW",
                    ctx.name,
                    system.fk,
                    info.system_id,
                    info.name,
                    info.capacity_kw,
                )
    ctx.uplink_health.last_success_ms = now
