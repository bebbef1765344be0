"""GPU instance leases in the efficiency figures (metering.efficiency, metering.allocation): measured
by their MIG instance's utilisation series (dcgm-exporter's labels, read by the DCGM collector and
kept by the store), weighted by the profile's compute fraction; not measured where the instance
cannot be told; hand-computed; a tenant sees only its own. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlmodel import select

from collectors.base import TargetResult
from collectors.dcgm import DCGM
from collectors.store import persist_results
from fleet.models import Gpu
from kiln.auth import principal_for_user
from metering.allocation import allocation_rows, daily_gpu_hours
from metering.efficiency import combined, efficiency_between, lease_figures, lease_totals, per_tenant
from tests.factories import World
from tests.metering_helpers import GPU_SKU, H100, at, card
from tests.test_instance_lease_metering import _instance, _mig_node

D = Decimal
UUID = "GPU-5f6e7d8c-0000-4000-8000-000000000001"
START, END = at("2026-10-01T10:00"), at("2026-10-01T12:00")


def _engine_active(world: World, gpu_i_id: str, profile: str, ratio: float, minutes: int, step: int = 5) -> None:
    """dcgm-exporter's `DCGM_FI_PROF_GR_ENGINE_ACTIVE` for one MIG instance every `step` minutes from
    10:00, labelled as it labels MIG series, through the DCGM collector's reading and the store."""
    spec = DCGM.table()["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]
    labels = {"gpu": "0", "UUID": UUID, "device": "nvidia0", "modelName": H100, "Hostname": "mig-node",
              "GPU_I_PROFILE": profile, "GPU_I_ID": gpu_i_id}
    for k in range(minutes // step):
        ts = START + timedelta(minutes=step * k)
        sample = DCGM.sample(spec, labels, ratio, ts)
        persist_results(world.session, "dcgm", [TargetResult("prometheus", ok=True, samples=[sample])], now=ts)
    world.session.commit()


def _fleet(world: World) -> None:
    """One H100: tenant a's 3g.40gb instance lease 10:00-12:00, its instance (the GPU's only 3g.40gb)
    reported at 60 % from 10:00 to 11:00; tenant b's 1g.10gb lease 10:00-11:00 on a GPU that reports
    two 1g.10gb instances (which is b's is not known)."""
    gpu_node = _mig_node(world, created_at=at("2026-10-01T09:00"))
    gpu = world.session.exec(select(Gpu).where(Gpu.node_id == gpu_node.id)).one()
    gpu.uuid = UUID
    world.session.commit()
    _instance(world, gpu_node.name, "a", "3g.40gb", "2026-10-01T10:00", "2026-10-01T12:00")
    _instance(world, gpu_node.name, "b", "1g.10gb", "2026-10-01T10:00", "2026-10-01T11:00")
    _engine_active(world, "1", "3g.40gb", 0.6, 60)
    _engine_active(world, "9", "1g.10gb", 0.9, 60)
    _engine_active(world, "10", "1g.10gb", 0.1, 60)


def _principal(world: World, name: str):
    return principal_for_user(world.session, world.callers[name].user)


def test_hand_computed_instance_lease_efficiency_and_unmeasured_when_the_instance_is_ambiguous(world: World) -> None:
    _fleet(world)
    rows = {r.tenant: r for r in efficiency_between(world.session, _principal(world, "admin"), START, END, now=END)}
    a, b = rows["tenant-a"], rows["tenant-b"]
    # a: 3/7 GPU x 2 h allocated = 0.857142...; measured 3/7 x 1 h; used 60 % of that
    assert (a.allocated_gpu_hours, a.measured_gpu_hours, a.used_gpu_hours) == (D("0.8571"), D("0.4286"), D("0.2571"))
    assert (a.efficiency, a.coverage) == (D("0.6000"), D("0.5000"))
    # b: 1/7 GPU x 1 h allocated; two 1g.10gb instances on the GPU: not measured rather than a guess
    assert (b.allocated_gpu_hours, b.measured_gpu_hours, b.used_gpu_hours) == (D("0.1429"), D("0.0000"), D("0.0000"))
    assert (b.efficiency, b.coverage) == (None, D("0.0000"))


def test_an_hourly_instance_series_counts_the_same_however_the_range_is_cut(world: World) -> None:
    """The first sample inside a range stands for the time since the instance's previous sample,
    also when that one is before the range (as the whole-node sums look back)."""
    gpu_node = _mig_node(world, created_at=at("2026-10-01T09:00"))
    gpu = world.session.exec(select(Gpu).where(Gpu.node_id == gpu_node.id)).one()
    gpu.uuid = UUID
    world.session.commit()
    _instance(world, gpu_node.name, "a", "3g.40gb", "2026-10-01T10:00", "2026-10-01T12:00")
    _engine_active(world, "1", "3g.40gb", 0.2, 120, step=60)  # 10:00 and 11:00 at 20 %
    admin = _principal(world, "admin")

    def measured(start, end):
        (a,) = lease_figures(world.session, admin, start, end, now=END)
        return a.measured, a.used

    half = at("2026-10-01T10:30")
    # from 10:30: the 11:00 sample stands for the hour since 10:00's (3/7 GPU), not one 5-minute bucket
    # (Decimal division carries 28 digits: sevenths compared to 20 places)
    assert [x.quantize(D("1e-20")) for x in measured(half, END)] == [
        (D(3) / 7).quantize(D("1e-20")), (D(3) / 7 * D("0.2")).quantize(D("1e-20"))]  # 3/7 GPU-hour at 20 %
    assert [(first + second).quantize(D("1e-20")) for first, second in zip(measured(START, half), measured(half, END))] == [
        whole.quantize(D("1e-20")) for whole in measured(START, END)]


def test_lease_totals_count_instance_leases_as_their_per_lease_figures_do(world: World) -> None:
    _fleet(world)
    for name, tenants in (("admin", {"tenant-a", "tenant-b"}), ("a_member", {"tenant-a"})):
        caller = _principal(world, name)
        totals = lease_totals(world.session, caller, START, END, now=END)
        figures = lease_figures(world.session, caller, START, END, now=END)
        assert totals.combined() == combined(per_tenant(world.session, figures))
        assert {f.lease.tenant_id for f in totals.instances} == {world.tenant(t.removeprefix("tenant-")).id for t in tenants}
        assert daily_gpu_hours(world.session, caller, START, END, now=END, totals=totals) == daily_gpu_hours(
            world.session, caller, START, END, now=END, figures=figures)
    a = lease_totals(world.session, _principal(world, "a_member"), START, END, now=END).combined()
    assert (a.allocated_gpu_hours, a.measured_gpu_hours, a.used_gpu_hours) == (D("0.8571"), D("0.4286"), D("0.2571"))


def test_instance_lease_allocation_rows_price_idle_like_the_bill_and_stay_within_the_tenant(world: World) -> None:
    _fleet(world)
    card(world, GPU_SKU, "2.80")
    rows = {r.tenant: r for r in allocation_rows(world.session, _principal(world, "admin"), START, END, now=END)}
    a = rows["tenant-a"]
    assert (a.kind, a.gpu_index, a.profile, a.gpu_model, a.gpus) == ("instance", 0, "3g.40gb", H100, 1)
    # idle = 3/7 x 1 h x 40 % GPU-hours x 2.80 = 0.48
    assert (a.idle_gpu_hours, a.idle_cost) == (D("0.1714"), D("0.48"))
    assert rows["tenant-b"].idle_cost == D("0.00") and rows["tenant-b"].coverage == D("0.0000")
    # allocated per day: 6/7 + 1/7 GPU-hours; used: a's only
    assert daily_gpu_hours(world.session, _principal(world, "admin"), START, END, now=END) == {
        "2026-10-01": (D("1.0000"), D("0.2571"))}
    mine = allocation_rows(world.session, _principal(world, "b_member"), START, END, now=END)
    assert [(r.tenant, r.profile) for r in mine] == [("tenant-b", "1g.10gb")]
    assert [r.tenant for r in efficiency_between(world.session, _principal(world, "b_member"), START, END, now=END)] == [
        "tenant-b"]


def test_a_profile_card_prices_the_idle_instance_hours(world: World) -> None:
    _fleet(world)
    card(world, GPU_SKU, "2.80")
    card(world, f"{GPU_SKU}:3g.40gb", "1.50")
    (a,) = [r for r in allocation_rows(world.session, _principal(world, "a_member"), START, END, now=END)]
    assert a.idle_cost == D("0.60")  # 1 h x 40 % idle instance-hours x 1.50


def test_the_efficiency_api_counts_instance_leases_of_the_callers_tenants_only(world: World, client) -> None:
    _fleet(world)
    url = "/api/v1/usage/efficiency"
    for who, expected in (("a_member", {"tenant-a": ("0.8571", "0.6000", "0.5000")}),
                          ("b_member", {"tenant-b": ("0.1429", None, "0.0000")}),
                          ("admin", {"tenant-a": ("0.8571", "0.6000", "0.5000"), "tenant-b": ("0.1429", None, "0.0000")})):
        response = client.get(url, params={"period": "2026-10"}, headers=world.headers(who))
        assert response.status_code == 200, response.text
        assert {r["tenant"]: (r["allocated_gpu_hours"], r["efficiency"], r["coverage"]) for r in response.json()} == expected
