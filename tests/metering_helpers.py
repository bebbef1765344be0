"""Helpers for metering tests: a small fleet with leases and price cards, made in the database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlmodel import select

from fleet.models import Node
from fleet.tenancy_models import Lease
from kiln.auth import Principal
from metering.bills import run_period
from metering.models import Bill, BillLine, TenantDiscount
from metering.price_cards import PriceCardCreate, create_card
from tests.factories import World
from tests.fleet_helpers import make_node_row

SYSTEM = Principal.system("test")
H100 = "NVIDIA H100 80GB HBM3"
GPU_SKU = f"gpu-hour:{H100}"
NODE_SKU = "node-hour:gpu.h100"
ENROLLED = datetime(2026, 9, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    """A UTC time from `2026-10-01T10:30` (Z implied)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def node(world: World, gpus: int = 1, **fields) -> Node:
    """A `gpu.h100` node with `gpus` H100s, enrolled on 2026-09-01 unless `created_at` says otherwise."""
    return make_node_row(world, gpus=gpus, resource_class="gpu.h100", **{"created_at": ENROLLED, **fields})


def lease(world: World, node_row: Node, tenant: str, start: str, end: str | None) -> Lease:
    """Lease `node_row` to tenant `a` or `b` over [start, end)."""
    row = Lease(tenant_id=world.tenant(tenant).id, node_id=node_row.id, starts_at=at(start),
                ends_at=at(end) if end else None, created_by="test")
    world.session.add(row)
    world.session.commit()
    return row


def card(world: World, sku: str, price: str, start: str = "2026-01-01T00:00", end: str | None = None, currency: str = "EUR") -> None:
    """A price card through the service (so its checks run)."""
    create_card(world.session, SYSTEM, PriceCardCreate(
        sku=sku, unit_price=price, currency=currency, effective_from=at(start), effective_to=at(end) if end else None))
    world.session.commit()


def discount(world: World, tenant: str, percent: str) -> None:
    """Give tenant `a` or `b` a contract discount."""
    world.session.add(TenantDiscount(tenant_id=world.tenant(tenant).id, percent=Decimal(percent)))
    world.session.commit()


def run(world: World, period: str = "2026-10", now: str = "2026-11-05T00:00", policy: str = "platform"):
    """Run bills for `period` as of `now` and commit."""
    summary = run_period(world.session, SYSTEM, period, policy=policy, now=at(now))
    world.session.commit()
    return summary


def bill_of(world: World, tenant: str, period: str = "2026-10") -> Bill | None:
    """Tenant `a`/`b`'s bill for `period`."""
    world.session.expire_all()
    return world.session.exec(select(Bill).where(Bill.tenant_id == world.tenant(tenant).id, Bill.period == period)).first()


def lines_of(world: World, bill: Bill) -> list[BillLine]:
    """A bill's lines, by SKU and window."""
    return list(world.session.exec(
        select(BillLine).where(BillLine.bill_id == bill.id).order_by(BillLine.kind, BillLine.sku, BillLine.window_start)).all())


def money(lines: list[BillLine]) -> list[tuple[str, Decimal, Decimal, Decimal]]:
    """(sku, quantity, list unit price, contracted cost) per line, normalised for comparison."""
    return [(l.sku, Decimal(l.quantity).normalize(), Decimal(l.list_unit_price).normalize(), Decimal(l.contracted_cost))
            for l in lines]
