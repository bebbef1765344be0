"""The billing benchmark's floor: the same month's bills, computed the shortest correct way.

Independent of Kiln's code on purpose (no `metering` import; psycopg and SQL, Fractions for the
arithmetic): what a competent engineer would write to bill this fleet from the same tables —
`k8s_allocation` intervals, `lease`, `node`, `gpu`, `price_card`, `tenant_discount` — for one
period, with Kiln's documented billing rules (README "Billing"):

1. One SQL statement sums, per tenant and SKU, quantity × microseconds inside the period:
   leased nodes give node-hours and GPU-hours (× the node's GPUs); GPU pods give GPU-hours of
   their node's model, less the time their node was leased whole (the lease holder pays it:
   overlaps with leases are subtracted). Whole hours or not, the period's sum is the same
   integer, so no hourly split is needed. A second statement gives the fleet's capacity
   (node- and GPU-microseconds from each node's creation).
2. In Python: quantity = microseconds ÷ 3.6e9, half-even to 6 places; list cost = quantity ×
   card price, contracted price = price × (100 − discount) ÷ 100 half-even to 9 places,
   costs half-even to the cent; idle = capacity − leased − requested GPU/node time, priced,
   and shared over tenants in proportion to their list cost in whole cents (largest
   remainder, ties to the lower tenant id); a bill's totals are the sums of its lines.

It assumes what the seed guarantees (one GPU model per node, one card per SKU over the period,
every pod on a known node) and checks the first two. Returns {tenant slug: (list total, total)}
and writes the bills as a small CSV (one line per tenant and SKU).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from pathlib import Path

PARTS_PER_HOUR = 3_600_000_000
CENT, MICRO, NANO = Decimal("0.01"), Decimal("0.000001"), Decimal("0.000000001")
EXACT = Context(prec=60)
US = "(extract(epoch from ({})) * 1000000)"  # an interval in microseconds, exactly (numeric)

USAGE_SQL = f"""
WITH lc AS (
  SELECT node_id, tenant_id, greatest(starts_at, %(lo)s) AS a, least(coalesce(ends_at, %(hi)s), %(hi)s) AS b
  FROM lease WHERE starts_at < %(hi)s AND (ends_at IS NULL OR ends_at > %(lo)s)),
g AS (SELECT node_id, min(model) AS model, count(*) AS n FROM gpu GROUP BY node_id),
al AS (
  SELECT t.id AS tenant_id, n.id AS node_id, k.quantity AS q,
         greatest(k.starts_at, %(lo)s) AS a, least(coalesce(k.ends_at, %(hi)s), %(hi)s) AS b
  FROM k8s_allocation k JOIN tenant t ON t.slug = k.tenant_slug JOIN node n ON n.name = k.node_name
  WHERE k.resource = 'nvidia.com/gpu' AND k.quantity > 0 AND k.starts_at < %(hi)s
    AND (k.ends_at IS NULL OR k.ends_at > %(lo)s))
SELECT tenant_id, sku, sum(us) FROM (
  SELECT lc.tenant_id, 'node-hour:' || coalesce(n.resource_class, 'default') AS sku, {US.format('lc.b - lc.a')} AS us
  FROM lc JOIN node n ON n.id = lc.node_id
  UNION ALL
  SELECT lc.tenant_id, 'gpu-hour:' || g.model, {US.format('lc.b - lc.a')} * g.n FROM lc JOIN g USING (node_id)
  UNION ALL
  SELECT al.tenant_id, 'gpu-hour:' || g.model, al.q * {US.format('al.b - al.a')} FROM al JOIN g USING (node_id)
  UNION ALL
  SELECT al.tenant_id, 'gpu-hour:' || g.model, -al.q * {US.format('least(al.b, lc.b) - greatest(al.a, lc.a)')}
  FROM al JOIN g USING (node_id) JOIN lc ON lc.node_id = al.node_id AND lc.a < al.b AND lc.b > al.a
) u GROUP BY tenant_id, sku
"""
CAPACITY_SQL = f"""
SELECT 'node-hour:' || coalesce(n.resource_class, 'default'), 'gpu-hour:' || g.model, g.n,
       sum({US.format('%(hi)s - greatest(n.created_at, %(lo)s)')})
FROM node n LEFT JOIN (SELECT node_id, min(model) AS model, count(*) AS n FROM gpu GROUP BY node_id) g ON g.node_id = n.id
WHERE n.created_at < %(hi)s GROUP BY 1, 2, 3
"""


def quantity(parts: int) -> Decimal:
    """Parts of a unit-hour as the unit, half-even to 6 places (Python's round of a Fraction is half-even)."""
    return Decimal(round(Fraction(parts, PARTS_PER_HOUR) * 10**6)).scaleb(-6)


def cents(amount: Decimal) -> Decimal:
    """Half-even to the cent, from the exact product."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN, context=EXACT)


def share(total: Decimal, weights: dict[int, Decimal]) -> dict[int, Decimal]:
    """`total` split over tenants in whole cents by weight: floors, then the leftover cents to the
    largest remainders (ties to the lower tenant id)."""
    tenants = sorted(t for t, w in weights.items() if w > 0)
    if total <= 0 or not tenants:
        return {}
    units, weight_sum = int(total / CENT), sum(Fraction(weights[t]) for t in tenants)
    exact = {t: units * Fraction(weights[t]) / weight_sum for t in tenants}
    floors = {t: int(e) for t, e in exact.items()}
    order = sorted(tenants, key=lambda t: (-(exact[t] - floors[t]), t))
    for t in order[:units - sum(floors.values())]:
        floors[t] += 1
    return {t: Decimal(f) * CENT for t, f in floors.items() if f}


def compute(conn, lo: datetime, hi: datetime, out: Path) -> dict[str, tuple[Decimal, Decimal]]:
    """The period [lo, hi)'s bills read through `conn` (psycopg 3): {tenant slug: (list total, total)};
    the lines go to `out` (CSV)."""
    params = {"lo": lo, "hi": hi}
    usage = conn.execute(USAGE_SQL, params).fetchall()
    capacity = conn.execute(CAPACITY_SQL, params).fetchall()
    cards = conn.execute("SELECT sku, unit_price FROM price_card WHERE effective_from < %(hi)s AND "
                         "(effective_to IS NULL OR effective_to > %(lo)s)", params).fetchall()
    discounts = dict(conn.execute("SELECT tenant_id, percent FROM tenant_discount").fetchall())
    slugs = dict(conn.execute("SELECT id, slug FROM tenant").fetchall())
    mixed = conn.execute("SELECT count(*) FROM (SELECT node_id FROM gpu GROUP BY node_id "
                         "HAVING count(DISTINCT model) > 1) m").fetchone()[0]
    prices = dict(cards)
    if len(prices) != len(cards) or mixed:
        raise SystemExit("floor: a SKU with two cards in the period, or a node with two GPU models: not handled")
    used: dict[str, int] = defaultdict(int)
    lines: dict[int, list[tuple]] = defaultdict(list)
    for tenant_id, sku, parts in sorted(usage):
        used[sku] += int(parts)
        q = quantity(int(parts))
        if not q:
            continue
        price = Decimal(prices.get(sku, 0))
        percent = Decimal(discounts.get(tenant_id, 0))
        contracted = (price * (100 - percent) / 100).quantize(NANO, ROUND_HALF_EVEN, EXACT) if percent else price
        lines[tenant_id].append((sku, q, price, cents(q * price), contracted, cents(q * contracted)))
    have: dict[str, int] = defaultdict(int)
    for node_sku, gpu_sku, gpus, micros in capacity:
        have[node_sku] += int(micros)
        if gpus:
            have[gpu_sku] += int(micros) * gpus
    idle = sum((cents(quantity(max(have[sku] - used[sku], 0)) * Decimal(prices.get(sku, 0))) for sku in have), Decimal(0))
    shares = share(idle, {t: sum((line[3] for line in ls), Decimal(0)) for t, ls in lines.items()})
    bills = {}
    with out.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["tenant", "sku", "quantity", "list_unit_price", "list_cost", "contracted_unit_price",
                         "contracted_cost"])
        for tenant_id, ls in sorted(lines.items()):
            part = shares.get(tenant_id, Decimal(0))
            ls = ls + ([("idle-share", Decimal(1), part, part, part, part)] if part else [])
            writer.writerows([slugs[tenant_id], *line] for line in ls)
            bills[slugs[tenant_id]] = (sum((line[3] for line in ls), Decimal(0)), sum((line[5] for line in ls), Decimal(0)))
    return bills
