"""The console's data functions: exact numbers and tenant scoping, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlmodel import select

from collectors.models import CollectorTargetState, HealthSnapshot, Rollup5m
from dashboards.fleet_data import (
    fleet_power,
    gpus_with_xid,
    node_rows,
    unreachable_bmcs,
)
from dashboards.node_data import node_detail
from dashboards.tenancy_data import (
    gpu_hours,
    quota_rows,
    running_nodes,
    stacked_by_day,
    total_by,
)
from dashboards.pages.usage import efficiency_stats, on_demand
import metering.efficiency as efficiency_module
from metering.efficiency import combined, efficiency_between
from fleet.models import Gpu, Node
from fleet.nodes import add_event
from fleet.tenancy_models import Lease, Vdc
from fleet.vdcs import quota_uses
from kiln.auth import Principal, principal_for_user
from tests.factories import World
from tests.fleet_helpers import make_node_row, make_vdc

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=1, hours=12)  # 2026-03-02 12:00


def principal(world: World, name: str) -> Principal:
    """The Principal of one of the world's callers (`admin`, `a_member`, ...)."""
    return principal_for_user(world.session, world.callers[name].user)


def lease(world: World, node: Node, tenant: str, start: datetime, end: datetime | None, vdc: str = "train") -> Lease:
    """A lease row through the named VDC."""
    vdc_id = world.session.exec(select(Vdc.id).where(Vdc.name == vdc)).one()
    row = Lease(tenant_id=world.tenant(tenant).id, node_id=node.id, vdc_id=vdc_id, starts_at=start, ends_at=end, created_by="t")
    world.session.add(row)
    world.session.commit()
    return row


def two_tenants(world: World) -> tuple[Node, Node]:
    """Node A (8 H100s, tenant a, 22:00-03:00 across midnight) and node B (4 B200s, tenant b, open)."""
    node_a = make_node_row(world, name="node-a", gpus=8)
    node_b = make_node_row(world, name="node-b", gpus=0)
    for index in range(4):
        world.session.add(Gpu(node_id=node_b.id, index=index, model="NVIDIA B200", uuid=f"GPU-B-{index}"))
    world.session.commit()
    make_vdc(world, "train", ["node-a", "node-b"], {"a": {"max_gpus": 16}, "b": {}})
    lease(world, node_a, "a", T0 + timedelta(hours=22), T0 + timedelta(days=1, hours=3))
    lease(world, node_b, "b", T0 + timedelta(hours=10), None)
    return node_a, node_b


def test_gpu_hours_split_at_midnight_and_scoped_to_the_tenant(world: World) -> None:
    two_tenants(world)
    start, end = T0, T0 + timedelta(days=2)
    mine = gpu_hours(world.session, principal(world, "a_member"), start, end, now=NOW)
    assert total_by(mine, "day") == {T0.date(): Decimal("16.000000"), (T0 + timedelta(days=1)).date(): Decimal("24.000000")}
    assert total_by(mine, "tenant") == {"tenant-a": Decimal("40.000000")}
    everyone = gpu_hours(world.session, principal(world, "admin"), start, end, now=NOW)
    # node B: 14 h on day 1 and 12 h (up to now) on day 2, 4 GPUs each
    assert total_by(everyone, "gpu_model") == {"NVIDIA B200": Decimal("104.000000"), "NVIDIA H100 80GB HBM3": Decimal("40.000000")}
    assert stacked_by_day(everyone, "tenant")["tenant-b"] == {"2026-03-01": Decimal("56.000000"), "2026-03-02": Decimal("48.000000")}
    only_b = gpu_hours(world.session, principal(world, "admin"), start, end, world.b.id, now=NOW)
    assert total_by(only_b, "tenant") == {"tenant-b": Decimal("104.000000")}
    clipped = gpu_hours(world.session, principal(world, "a_member"), T0 + timedelta(days=1), end, now=NOW)
    assert total_by(clipped, "vdc") == {"train": Decimal("24.000000")}


def _utilisation(world: World, gpu: str, start: datetime, step: timedelta, count: int, percent: float) -> None:
    """`count` utilisation samples of one GPU from `start`, `step` apart (each its own rollup bucket)."""
    for k in range(count):
        world.session.add(Rollup5m(entity=gpu, metric="gpu_util_percent", bucket=start + k * step, count=1, sum=percent,
                                   min=percent, max=percent))
    world.session.commit()


def test_efficiency_weighs_5_minute_samples_inside_leases_only(world: World) -> None:
    two_tenants(world)
    # 09:00-11:00 every 5 minutes at 50 %: only 10:00-11:00 is leased to b
    _utilisation(world, "GPU-B-0", T0 + timedelta(hours=9), timedelta(minutes=5), 24, 50.0)
    (row,) = efficiency_between(world.session, principal(world, "b_member"), T0, T0 + timedelta(days=2), now=NOW)
    # 12 samples × 5 min; allocated: 4 GPUs from 10:00 on day 1 to 12:00 on day 2 (26 h)
    assert (row.tenant, row.measured_gpu_hours, row.used_gpu_hours, row.efficiency) == (
        "tenant-b", Decimal("1.0000"), Decimal("0.5000"), Decimal("0.5000"))
    assert (row.allocated_gpu_hours, row.coverage) == (Decimal("104.0000"), Decimal("0.0096"))
    (mine,) = efficiency_between(world.session, principal(world, "a_member"), T0, T0 + timedelta(days=2), now=NOW)
    assert (mine.tenant, mine.measured_gpu_hours, mine.efficiency, mine.coverage) == ("tenant-a", 0, None, 0)


@pytest.mark.parametrize("leases_per_query", [500, 0])  # 0: the one-pass read used for many leases
def test_hourly_samples_count_for_their_hour_and_match_the_utilisation_charts(world: World, monkeypatch,
                                                                               leases_per_query: int) -> None:
    """Issue 18: hourly samples were counted as one 5-minute bucket each, so a tenant whose GPUs
    ran at 61 % read 5 % efficient (used ÷ allocated with 1/12 of the hours used). Each sample
    stands for the hour since the GPU's previous one; the first, with none before it, for one
    5-minute bucket (`collectors.utilisation_days`)."""
    monkeypatch.setattr(efficiency_module, "LEASES_PER_QUERY", leases_per_query)
    two_tenants(world)
    for index in range(4):  # node B's 4 GPUs at 61 %, sampled hourly over the whole lease up to now
        _utilisation(world, f"GPU-B-{index}", T0 + timedelta(hours=10), timedelta(hours=1), 26, 61.0)
    everyone = efficiency_between(world.session, principal(world, "admin"), T0, T0 + timedelta(days=2), now=NOW)
    row = next(r for r in everyone if r.tenant == "tenant-b")
    # 4 GPUs × (25 h + 5 min) measured, 61 % of it used
    assert (row.allocated_gpu_hours, row.measured_gpu_hours, row.used_gpu_hours) == (
        Decimal("104.0000"), Decimal("100.3333"), Decimal("61.2033"))
    assert (row.efficiency, row.coverage) == (Decimal("0.6100"), Decimal("0.9647"))
    total = combined(everyone)  # tenant A: 40 GPU-hours allocated, none measured
    assert (total.allocated_gpu_hours, total.measured_gpu_hours, total.efficiency) == (
        Decimal("144.0000"), Decimal("100.3333"), Decimal("0.6100"))
    assert total.coverage == Decimal("0.6968")
    texts = {s.children[0].id: s.children[0].children for s in efficiency_stats(total)}
    assert texts == {"stat-used": "61.2", "stat-efficiency": "61 %", "stat-coverage": "70 %"}


def test_the_allocation_view_prices_idle_gpu_hours_and_flags_waste(world: World) -> None:
    from metering.allocation import allocation_rows, daily_gpu_hours
    from tests.metering_helpers import card, discount

    node_a, _ = two_tenants(world)
    card(world, "gpu-hour:NVIDIA B200", "4.00")  # node A's H100s have no card: their idle cost is unknown
    discount(world, "b", "25")
    for index in range(4):  # node B's GPUs at 30 %, 12 hourly samples from 10:00 of day 1: 11 h 5 min measured each
        _utilisation(world, f"GPU-B-{index}", T0 + timedelta(hours=10), timedelta(hours=1), 12, 30.0)
    one_of_a = world.session.exec(select(Gpu).where(Gpu.node_id == node_a.id, Gpu.index == 0)).one()
    one_of_a.uuid = "GPU-A-0"
    world.session.add(one_of_a)
    _utilisation(world, "GPU-A-0", T0 + timedelta(hours=22), timedelta(hours=1), 5, 90.0)  # one of node A's 8 GPUs, 4 h 5 min
    admin = principal(world, "admin")
    rows = allocation_rows(world.session, admin, T0, T0 + timedelta(days=2), now=NOW)
    b, a = rows  # most idle cost first
    assert (b.tenant, b.node, b.gpu_model, b.gpus) == ("tenant-b", "node-b", "NVIDIA B200", 4)
    assert (b.allocated_gpu_hours, b.measured_gpu_hours, b.used_gpu_hours, b.idle_gpu_hours) == (
        Decimal("104.0000"), Decimal("44.3333"), Decimal("13.3000"), Decimal("31.0333"))
    assert (b.efficiency, b.coverage, b.waste) == (Decimal("0.3000"), Decimal("0.4263"), False)  # too little measured to judge
    assert (b.idle_cost, b.currency) == (Decimal("93.10"), "EUR")  # 31.0333… idle GPU-hours × 4.00 less 25 %
    assert (a.tenant, a.idle_cost, a.efficiency, a.measured_gpu_hours) == ("tenant-a", None, Decimal("0.9000"), Decimal("4.0833"))
    assert [r.tenant for r in allocation_rows(world.session, principal(world, "a_member"), T0, T0 + timedelta(days=2),
                                              now=NOW)] == ["tenant-a"]
    days = daily_gpu_hours(world.session, principal(world, "b_member"), T0, T0 + timedelta(days=2), now=NOW)
    assert days == {"2026-03-01": (Decimal("56.0000"), Decimal("13.3000")), "2026-03-02": (Decimal("48.0000"), Decimal("0.0000"))}


def test_a_wasteful_lease_is_flagged_when_enough_of_it_was_measured(world: World) -> None:
    from metering.allocation import allocation_rows

    two_tenants(world)
    for index in range(4):
        _utilisation(world, f"GPU-B-{index}", T0 + timedelta(hours=10), timedelta(hours=1), 26, 20.0)
    (row,) = allocation_rows(world.session, principal(world, "b_member"), T0, T0 + timedelta(days=2), now=NOW)
    assert (row.efficiency, row.coverage, row.waste, row.idle_cost) == (Decimal("0.2000"), Decimal("0.9647"), True, None)


def test_a_gap_in_the_samples_is_missing_data_not_a_long_sample(world: World) -> None:
    two_tenants(world)
    start = T0 + timedelta(hours=10)
    _utilisation(world, "GPU-B-0", start, timedelta(minutes=5), 3, 100.0)  # 10:00, 10:05, 10:10 ...
    _utilisation(world, "GPU-B-0", start + timedelta(hours=3), timedelta(minutes=5), 2, 0.0)  # ... then 13:00, 13:05
    (row,) = efficiency_between(world.session, principal(world, "b_member"), T0, T0 + timedelta(days=2), now=NOW)
    assert (row.measured_gpu_hours, row.used_gpu_hours) == (Decimal("0.4167"), Decimal("0.2500"))  # 5 × 5 min; 3 busy


def test_node_rows_and_power_show_tenants_only_their_nodes(world: World) -> None:
    node_a, node_b = two_tenants(world)
    world.session.add(Lease(tenant_id=world.a.id, node_id=node_a.id, starts_at=NOW, created_by="t"))  # in force now
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for node, watts in ((node_a, 1000.0), (node_b, 3000.0)):
        world.session.add(Rollup5m(entity=node.name, metric="ipmi_dcmi_power_consumption_watts",
                                   bucket=now - timedelta(minutes=10), count=2, sum=2 * watts, min=watts, max=watts))
    node_a.last_error = "BMC said no"
    world.session.add(node_a)
    world.session.commit()
    admin, member = principal(world, "admin"), principal(world, "a_member")
    assert [r["name"] for r in node_rows(world.session, admin)] == ["node-a", "node-b"]
    rows = node_rows(world.session, member)
    assert [(r["name"], r["tenant"], r["last_error"], r["gpus"]) for r in rows] == [("node-a", "", "", 8)]
    window = (now - timedelta(hours=1), now + timedelta(minutes=5))
    assert [p.value for p in fleet_power(world.session, admin, *window)] == [4000.0]
    assert [p.value for p in fleet_power(world.session, member, *window)] == [1000.0]


def test_bmcs_and_xid_errors_are_for_the_right_eyes(world: World) -> None:
    node_a, node_b = two_tenants(world)
    world.session.add(Lease(tenant_id=world.a.id, node_id=node_a.id, starts_at=NOW, created_by="t"))
    world.session.add(CollectorTargetState(collector="ipmi", target="node-b", up=False, consecutive_failures=3, last_error="timeout"))
    world.session.add(CollectorTargetState(collector="ipmi", target="node-a", up=True))
    world.session.add(HealthSnapshot(entity="GPU-B-1", node_id=node_b.id, source="dcgm", metric="gpu_last_xid", labels_key="",
                                     value=48.0, unit="code", observed_at=NOW))
    world.session.commit()
    admin, member = principal(world, "admin"), principal(world, "a_member")
    assert [(b.target, b.consecutive_failures) for b in unreachable_bmcs(world.session, admin)] == [("node-b", 3)]
    assert unreachable_bmcs(world.session, member) == []
    assert [(x["node"], x["index"], x["model"], x["xid"]) for x in gpus_with_xid(world.session, admin)] == [
        ("node-b", 1, "NVIDIA B200", 48)]
    assert gpus_with_xid(world.session, member) == []


def test_a_tenant_sees_a_nodes_events_only_from_its_own_lease(world: World) -> None:
    node = make_node_row(world, name="node-x", gpus=2, redfish_address="redfish://10.9.9.9/redfish/v1/Systems/1")
    make_vdc(world, "train", ["node-x"], {"a": {}, "b": {}})
    add_event(world.session, node, "lease", "leased to tenant-b via VDC train", "ops")
    world.session.commit()
    # tenant A's lease is backdated to before tenant B's line was written: that line must stay hidden
    lease(world, node, "a", datetime.now(UTC) - timedelta(days=1), None)
    add_event(world.session, node, "lease", "leased to tenant-a via VDC train", "ops")
    world.session.commit()
    mine = node_detail(world.session, principal(world, "a_member"), "node-x")
    assert [e["message"] for e in mine.events] == ["leased to tenant-a via VDC train"]
    assert mine.events[0]["actor"] == "" and mine.node.bmc_address is None and mine.lease.tenant == "tenant-a"
    assert mine.node.redfish_address is None  # the second BMC address is the admins' too
    everything = node_detail(world.session, principal(world, "admin"), "node-x")
    assert everything.node.redfish_address == "redfish://10.9.9.9/redfish/v1/Systems/1"
    assert [e["message"] for e in everything.events] == ["leased to tenant-a via VDC train", "leased to tenant-b via VDC train"]


def test_the_node_page_says_which_part_of_a_bmc_poll_failed_to_admins_only(world: World) -> None:
    node = make_node_row(world, name="node-x", gpus=2)
    make_vdc(world, "train", ["node-x"], {"a": {}})
    lease(world, node, "a", datetime.now(UTC) - timedelta(days=1), None)
    assert node_detail(world.session, principal(world, "admin"), "node-x").bmc == "not polled yet"
    refused = "dcmi: the BMC refuses it at the user privilege level: raise the node's ipmi_privilege"
    state = CollectorTargetState(collector="ipmi", target="node-x", up=True, last_attempt_at=NOW, last_success_at=NOW,
                                 last_error=refused)
    world.session.add(state)
    world.session.commit()
    assert node_detail(world.session, principal(world, "admin"), "node-x").bmc == f"answering; {refused}"
    assert node_detail(world.session, principal(world, "a_member"), "node-x").bmc == "answering"
    state.up, state.last_error = False, "no response within 2.0 s from 10.0.0.9:623"
    world.session.add(state)
    world.session.commit()
    assert node_detail(world.session, principal(world, "admin"), "node-x").bmc == (
        f"not answering: no response within 2.0 s from 10.0.0.9:623 (last answered {NOW:%Y-%m-%d %H:%M} UTC)")
    assert node_detail(world.session, principal(world, "a_member"), "node-x").bmc.startswith(
        "not answering: the BMC does not answer")


def test_quota_rows_and_running_nodes_are_scoped(world: World) -> None:
    node_a, _ = two_tenants(world)
    world.session.add(Lease(tenant_id=world.a.id, node_id=node_a.id, vdc_id=world.session.exec(select(Vdc.id)).one(),
                            starts_at=NOW, created_by="t"))
    world.session.commit()
    member = principal(world, "a_member")
    assert [(q["vdc"], q["tenant"], q["max_gpus"]) for q in quota_rows(world.session, member)] == [("train", "tenant-a", 16)]
    assert {q["tenant"] for q in quota_rows(world.session, principal(world, "admin"))} == {"tenant-a", "tenant-b"}
    running = running_nodes(world.session, member)
    assert [(r["node"], r["tenant"], r["gpus"]) for r in running] == [("node-a", "tenant-a", "8 × NVIDIA H100 80GB HBM3")]
    assert {r["node"] for r in running_nodes(world.session, principal(world, "admin"))} == {"node-a", "node-b"}


def test_long_id_lists_read_whole_tables_with_the_same_results(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    node_a, _ = two_tenants(world)
    world.session.add(Lease(tenant_id=world.a.id, node_id=node_a.id, vdc_id=world.session.exec(select(Vdc.id)).one(),
                            starts_at=NOW, created_by="t"))
    world.session.commit()
    member, admin = principal(world, "a_member"), principal(world, "admin")
    window = (T0, NOW)

    def views() -> list:
        return [running_nodes(world.session, member), running_nodes(world.session, admin),
                quota_uses(world.session, list(world.session.exec(select(Vdc.id)).all()), at=NOW),
                gpu_hours(world.session, member, *window, now=NOW), gpu_hours(world.session, admin, *window, now=NOW),
                node_rows(world.session, member)]

    short = views()
    monkeypatch.setattr("kiln.db.MANY_IDS", 0)  # every id list counts as long: whole tables, rows picked by key
    assert views() == short
    assert [r["node"] for r in short[0]] == ["node-a"]  # and the member still sees its own node only


def test_sensor_readings_in_bytes_read_in_binary_units() -> None:
    from dashboards.pages.node import _value

    assert [_value(v, u) for v, u in ((42949672960.0, "bytes"), (3 * 1024 ** 2, "bytes"), (512.0, "bytes"),
                                      (86.0, "celsius"), (None, "watts"))] == [
        "40.0 GiB", "3.0 MiB", "512 bytes", "86 celsius", "no reading"]


def test_usage_details_say_how_to_open_a_per_lease_table_too_long_for_the_page() -> None:
    hint = on_demand(1063)
    assert hint.id == "usage-details-hint" and hint.children.startswith("1,063 leases in this range: choose a table above")
