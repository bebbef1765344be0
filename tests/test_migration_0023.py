"""Migration 0023: existing GPU instance leases get their GPU's model and UUID and their node's
number of GPUs from the GPU rows as they are (a lease whose GPU row is already gone: model '' and
the node's remaining GPUs + its own), and are billed from them; a downgrade drops the columns. On
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, text
from sqlmodel import Session, select

from fleet.tenancy_models import GpuInstanceLease
from kiln.schema import head_revision, migrate_to
from metering.models import UsageRecord
from metering.usage import build_usage
from tests.test_migration_0010 import fresh_engine  # noqa: F401 (a fixture)

H100, A30 = "NVIDIA H100 80GB HBM3", "NVIDIA A30 24GB"
START = datetime(2026, 11, 2, 10, tzinfo=UTC)
# (id, node, GPU index, profile): lease 3's GPU 1 of node 2 was removed before the upgrade
LEASES = ((1, 1, 0, "3g.40gb"), (2, 1, 1, "2g.20gb"), (3, 2, 1, "1g.6gb"))


def _seed_at_0022(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO tenant (id, slug, name, cost_centre, description, created_at) "
                                "VALUES (1, 'acme', 'Acme', NULL, '', '2026-11-01 00:00:00+00:00')"))
        for node_id in (1, 2):
            connection.execute(text(
                "INSERT INTO node (id, name, provisioner, hardware_type, bmc_driver, bmc_address, facts, "
                "provision_state, maintenance, created_at, updated_at) VALUES (:id, :name, 'fake', 'ipmi', "
                "'ipmi', :address, '{}', 'active', false, '2026-11-01 00:00:00+00:00', '2026-11-01 00:00:00+00:00')"),
                {"id": node_id, "name": f"node-{node_id}", "address": f"ipmi://10.0.0.{node_id}"})
        for node_id, index, model, uuid in ((1, 0, H100, "GPU-aaaa"), (1, 1, H100, None), (2, 0, A30, None)):
            connection.execute(text('INSERT INTO gpu (node_id, "index", uuid, model, vendor) '
                                    "VALUES (:node, :index, :uuid, :model, 'nvidia')"),
                               {"node": node_id, "index": index, "uuid": uuid, "model": model})
        for lease_id, node_id, index, profile in LEASES:
            connection.execute(text(
                "INSERT INTO gpu_instance_lease (id, tenant_id, node_id, vdc_id, gpu_index, profile, starts_at, "
                "ends_at, created_by, created_at, note) VALUES (:id, 1, :node, NULL, :index, :profile, :start, :end, "
                "'test', :start, '')"),
                {"id": lease_id, "node": node_id, "index": index, "profile": profile, "start": START,
                 "end": START.replace(hour=11)})


def test_existing_instance_leases_record_their_gpu_and_are_billed_by_it(fresh_engine: Engine) -> None:  # noqa: F811
    engine = fresh_engine
    assert migrate_to(engine, "0022") == "0022"
    _seed_at_0022(engine)
    assert migrate_to(engine, head_revision()) == head_revision()
    with Session(engine) as session:
        assert [(l.id, l.gpu_model, l.gpu_uuid, l.node_gpus) for l in session.exec(
            select(GpuInstanceLease).order_by(GpuInstanceLease.id))] == [
            (1, H100, "GPU-aaaa", 2), (2, H100, None, 2), (3, "", None, 2)]
        build_usage(session, START.replace(hour=0), START.replace(day=3, hour=0), now=START.replace(hour=12))
        session.commit()
        billed = {(r.resource_id, r.sku, r.quantity_parts) for r in session.exec(select(UsageRecord))}
    # 3/7 and 2/7 of an H100 for an hour (parts by largest remainder); lease 3, whose GPU row was gone
    # before the upgrade, under a model-less SKU (1 slice of the default 7): unpriced, not lost
    assert billed == {("node-1", f"gpu-hour:{H100}:3g.40gb", 1_542_857_143),
                      ("node-1", f"gpu-hour:{H100}:2g.20gb", 1_028_571_428),
                      ("node-2", "gpu-hour::1g.6gb", 514_285_714)}

    assert migrate_to(engine, "0022") == "0022"
    columns = {c["name"] for c in inspect(engine).get_columns("gpu_instance_lease")}
    assert not columns & {"gpu_model", "gpu_uuid", "node_gpus"} and "profile" in columns
