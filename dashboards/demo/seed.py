"""The demo's fleet, tenants, users, VDCs, leases, price cards and budgets, made through Kiln's
own services (the same validation, audit log and quota checks as the API).

3 racks × 16 nodes × 8 GPUs (H100 in racks r1-r2, A100 in r3), enrolled 30 days ago (when the
history starts; `kiln demo` then provisions them through the fake driver), 6 tenants, three VDCs, a
month of leases (some starting mid-hour, some handed from one tenant to another, a few nodes idle
so idle cost shows), Kubernetes pods on a MIG-partitioned node and on a time-sliced one-GPU node,
one GPU instance lease of a MIG instance of that node, effective-dated price cards with a
mid-period price change, one contract discount, and budgets. Seeding is idempotent: a second run only refreshes the BMC addresses
(the simulators get new ports on every start).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from pydantic import SecretStr
from sqlmodel import Session, select

from collectors.models import K8sAllocation
from fleet.instance_leases import create_instance_lease
from fleet.leases import create_lease
from fleet.models import Node
from fleet.nodes import create_node
from fleet.runtime import FleetRuntime
from fleet.schemas import NodeCreate
from fleet.tenancy_schemas import GpuInstanceLeaseCreate, LeaseCreate, VdcCreate
from fleet.vdcs import create_vdc
from kiln.auth import Principal
from kiln.models import Tenant
from kiln.roles import Role
from kiln.tenants import TenantCreate, create_tenant
from kiln.users import UserCreate, create_user
from metering.budgets import BudgetCreate, create_budget
from metering.carbon_intensity import store
from metering.discounts import DiscountCreate, create_discount
from metering.price_cards import import_cards

DEMO_PASSWORD = "kiln-demo-password"
HISTORY_DAYS = 30
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
RACKS = {"r1": ("gpu.h100", H100), "r2": ("gpu.h100", H100), "r3": ("gpu.a100", A100)}
# grid zone per rack and a made-up daily intensity curve (mean, swing in gCO2e/kWh): coal-heavy
# "DE" and nuclear "FR"-like figures, synthetic (not Electricity Maps data), so emissions show
ZONES = {"r1": "DE", "r2": "DE", "r3": "FR"}
INTENSITY_CURVES = {"DE": (380, 120), "FR": (55, 20)}
NODES_PER_RACK = 16
GPUS_PER_NODE = 8
TENANTS = {  # slug: (name, cost centre)
    "acme": ("Acme Robotics", "CC-1010"), "globex": ("Globex Research", "CC-1020"),
    "initech": ("Initech AI", "CC-1030"), "umbrella": ("Umbrella Labs", "CC-1040"),
    "hooli": ("Hooli Search", "CC-2010"), "stark": ("Stark Vision", "CC-2020"),
}
VDCS = {"training": (("r1", "r2"), ("acme", "globex", "initech", "umbrella")), "inference": (("r3",), ("hooli", "stark"))}
MEMBERS = {"alice": "acme", "bob": "globex"}  # tenant members named in the banner
# Two unleased inference nodes run Kubernetes pods: r3-n08's A100s are MIG-partitioned (mixed
# strategy) and serve two tenants' pods; r3-n16 is a one-GPU box time-sliced by three notebooks.
MIG_NODE, TIME_SLICED_NODE = "r3-n08", "r3-n16"
# One MIG instance of r3-n08 leased bare-metal (a GPU instance lease) to a tenant with no pod
# there, through a VDC of that node alone: (tenant, VDC, GPU index, profile, days after enrolment)
INSTANCE_LEASE = ("initech", "mig-lab", 7, "3g.40gb", 9)
# daily pods: (tenant, namespace, pod, resource, count, start hour, hours)
SHARED_GPU_PODS = {
    MIG_NODE: (("hooli", "hooli-serving", "ranker", "nvidia.com/mig-3g.40gb", 2, 8, 10),
               ("stark", "stark-ml", "embedder", "nvidia.com/mig-1g.10gb", 3, 6, 14),
               ("stark", "stark-ml", "nightly", "nvidia.com/mig-2g.20gb", 1, 20, 6)),
    TIME_SLICED_NODE: (("hooli", "hooli-notebooks", "nb-ana", "nvidia.com/gpu", 1, 9, 8),
                       ("stark", "stark-notebooks", "nb-raj", "nvidia.com/gpu", 1, 10, 8),
                       ("hooli", "hooli-notebooks", "nb-lee", "nvidia.com/gpu", 1, 13, 2)),
}


@dataclass(frozen=True)
class DemoLogin:
    """A demo user and what it is."""

    username: str
    role: str
    tenant: str | None


def node_names() -> list[str]:
    """Every demo node's name, rack by rack."""
    return [f"{rack}-n{i:02d}" for rack in RACKS for i in range(1, NODES_PER_RACK + 1)]


def gpu_uuid(node: str, index: int) -> str:
    """The demo GPU's UUID, as dcgm-exporter would label it."""
    return f"GPU-{node}-{index}"


def logins() -> list[DemoLogin]:
    """The demo's users."""
    users = [DemoLogin("admin", Role.INFRA_ADMIN.value, None), DemoLogin("finance", Role.FINANCE.value, None)]
    users += [DemoLogin(f"{slug}-admin", Role.TENANT_ADMIN.value, slug) for slug in TENANTS]
    users += [DemoLogin(name, Role.TENANT_MEMBER.value, slug) for name, slug in MEMBERS.items()]
    return users


def seeded(session: Session) -> bool:
    """True when the demo data is already there."""
    return session.exec(select(Tenant).where(Tenant.slug == "acme")).first() is not None


def seed(session: Session, runtime: FleetRuntime, bmcs: dict[str, dict], now: datetime) -> None:
    """Create everything (call once, on an empty database); `bmcs` maps node name → its BMC."""
    system = Principal.system("kiln-demo")
    for slug, (name, cost_centre) in TENANTS.items():
        create_tenant(session, system, TenantCreate(slug=slug, name=name, cost_centre=cost_centre))
    for login in logins():
        create_user(session, system, UserCreate(username=login.username, role=Role(login.role),
                                                tenants=[login.tenant] if login.tenant else [],
                                                password=SecretStr(DEMO_PASSWORD)))
    for number, name in enumerate(node_names()):
        rack = name.split("-")[0]
        resource_class, model = RACKS[rack]
        bmc = bmcs[name]
        node = create_node(session, system, NodeCreate(
            name=name, provisioner="fake", bmc_address=f"ipmi://{bmc['host']}:{bmc['port']}",
            bmc_username=bmc["username"], bmc_password=bmc["password"],
            boot_mac=f"52:54:00:de:{number // 256:02x}:{number % 256:02x}", resource_class=resource_class, rack=rack,
            zone=ZONES[rack],
            tags=["demo", "train" if rack != "r3" else "infer"],
            facts={"cpu_model": "AMD EPYC 9454", "cpu_cores": 96, "ram_mib": 1536 * 1024},
            gpus=[{"index": i, "model": model, "vendor": "nvidia", "uuid": gpu_uuid(name, i), "memory_mib": 81559}
                  for i in range(1 if name == TIME_SLICED_NODE else GPUS_PER_NODE)],
        ), runtime.drivers, runtime.box)
        # enrolled when the demo's history starts: capacity (and idle cost) counts from here on
        node.created_at = history_start(now)
        session.add(node)
    session.flush()
    for vdc, (racks, tenants) in VDCS.items():
        create_vdc(session, system, VdcCreate(
            name=vdc, description=f"racks {', '.join(racks)}", selectors=[{"kind": "rack", "value": r} for r in racks],
            tenants=[{"tenant": t, "max_nodes": 12, "max_gpus": 96} for t in tenants]))
    _lease_month(session, system, now)
    _instance_lease(session, system, now)
    _shared_gpu_pods(session, now)
    _price_cards(session, system, now)
    _carbon_intensity(session, now)
    create_discount(session, system, DiscountCreate(tenant="acme", percent=Decimal("12.5")))
    for slug, amount in (("acme", "60000"), ("globex", "25000"), ("hooli", "40000")):
        create_budget(session, system, BudgetCreate(tenant=slug, name=f"{slug} monthly", amount=Decimal(amount),
                                                    currency="USD", thresholds=[50, 80, 100]))


def refresh_bmcs(session: Session, runtime: FleetRuntime, bmcs: dict[str, dict]) -> None:
    """Point every demo node at its simulator's current port."""
    for node in session.exec(select(Node).where(Node.name.in_(list(bmcs)))):
        bmc = bmcs[node.name]
        node.bmc_address = f"ipmi://{bmc['host']}:{bmc['port']}"
        node.bmc_password_encrypted = runtime.box.encrypt(bmc["password"])
        session.add(node)


def history_start(now: datetime) -> datetime:
    """The hour the demo's fleet was enrolled and its 30 days of history begin."""
    return (now - timedelta(days=HISTORY_DAYS)).replace(minute=0, second=0, microsecond=0)


def _carbon_intensity(session: Session, now: datetime) -> None:
    """Hourly intensity for each demo zone from the history's start to a day ahead: lowest at
    midday (solar), highest in the evening."""
    hours = int((now - history_start(now)) / timedelta(hours=1)) + 24
    rows = []
    for zone, (mean, swing) in INTENSITY_CURVES.items():
        for n in range(hours):
            hour = history_start(now) + timedelta(hours=n)
            shape = math.cos((hour.hour - 19) / 24 * 2 * math.pi)  # 1 at 19:00, -1 at 07:00 … midday dip below
            value = Decimal(repr(round(mean + swing * shape - swing / 3 * math.cos((hour.hour - 13) / 12 * math.pi), 3)))
            rows.append({"zone": zone, "hour": hour, "g_co2e_per_kwh": max(value, Decimal(1))})
    store(session, rows, "import")


def _lease_month(session: Session, system: Principal, now: datetime) -> None:
    """Leases over the last 30 days: most nodes held, some handed over mid-month, a few idle."""
    month_ago = history_start(now)
    for vdc, (racks, tenants) in VDCS.items():
        nodes = [n for n in node_names() if n.split("-")[0] in racks]
        for k, node in enumerate(nodes):
            if k % 8 == 7:
                continue  # idle capacity: priced as idle cost
            tenant = tenants[k % len(tenants)]
            start = month_ago + timedelta(hours=(k * 7) % 48, minutes=17 if k % 3 == 0 else 0)
            if k % 5 == 0:  # handed to the next tenant after 18 days
                handover = month_ago + timedelta(days=18, hours=k % 6)
                create_lease(session, system, LeaseCreate(node=node, tenant=tenant, vdc=vdc, starts_at=start,
                                                          ends_at=handover, note="demo"))
                tenant, start = tenants[(k + 1) % len(tenants)], handover + timedelta(hours=5)
            create_lease(session, system, LeaseCreate(node=node, tenant=tenant, vdc=vdc, starts_at=start, note="demo"))


def _instance_lease(session: Session, system: Principal, now: datetime) -> None:
    """`INSTANCE_LEASE`: its VDC (the MIG node, granted to its tenant only) and the open lease."""
    tenant, vdc, gpu_index, profile, days = INSTANCE_LEASE
    create_vdc(session, system, VdcCreate(name=vdc, description=f"MIG instances of {MIG_NODE}", nodes=[MIG_NODE],
                                          tenants=[{"tenant": tenant, "max_gpus": 1}]))
    create_instance_lease(session, system, GpuInstanceLeaseCreate(
        node=MIG_NODE, tenant=tenant, vdc=vdc, gpu_index=gpu_index, profile=profile,
        starts_at=history_start(now) + timedelta(days=days, minutes=17), note="demo"))


def _shared_gpu_pods(session: Session, now: datetime) -> None:
    """A month of daily pods on the MIG node and the time-sliced GPU, as the Kubernetes collector
    stores them (the demo has no cluster of its own)."""
    for day in range(HISTORY_DAYS + 1):
        midnight = history_start(now).replace(hour=0) + timedelta(days=day)
        for node, pods in SHARED_GPU_PODS.items():
            for tenant, namespace, pod, resource, count, hour, hours in pods:
                start = midnight + timedelta(hours=hour)
                if start < history_start(now) or start >= now:
                    continue
                session.add(K8sAllocation(
                    namespace=namespace, tenant_slug=tenant, pod=f"{pod}-{day:02d}", pod_uid=f"demo-{node}-{pod}-{day}",
                    node_name=node, resource=resource, quantity=Decimal(count), starts_at=start,
                    ends_at=min(start + timedelta(hours=hours), now)))


def _price_cards(session: Session, system: Principal, now: datetime) -> None:
    """List prices in USD; the H100 GPU-hour gets cheaper 12 days ago (a mid-period change)."""
    since = (now - timedelta(days=90)).strftime("%Y-%m-%dT00:00:00Z")
    change = (now - timedelta(days=12)).strftime("%Y-%m-%dT00:00:00Z")
    rows = [
        f"gpu-hour:{H100},,2.4900,USD,{since},{change}",
        f"gpu-hour:{H100},,2.1900,USD,{change},",
        f"gpu-hour:{A100},,1.2900,USD,{since},",
        f"node-hour:gpu.h100,,1.8500,USD,{since},",
        f"node-hour:gpu.a100,,1.1000,USD,{since},",
        f"kwh,,0.1420,USD,{since},",
        f"cpu-core-hour,,0.0310,USD,{since},",
        f"ram-gib-hour,,0.0042,USD,{since},",
    ]
    import_cards(session, system, "sku,unit,unit_price,currency,effective_from,effective_to\n" + "\n".join(rows) + "\n")
