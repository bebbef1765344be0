"""The node table's server-side pages (dashboards.node_grid.rows_block, AG Grid's infinite row model):
paging, sorting, column filters and the search words over every column, as the grid did in the
browser, and a tenant's table holding only their nodes whatever they ask. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dashboards import node_grid
from dashboards.node_grid import rows_block
from fleet.tenancy_models import Lease
from kiln.auth import principal_for_user
from tests.factories import World
from tests.fleet_helpers import make_node_row

RACKS = {"n-01": "r2", "n-02": "r1", "n-03": "r2", "n-04": None, "n-05": "r1", "n-06": "r3"}


@pytest.fixture
def callers(world: World):
    node_grid.forget()
    for i, (name, rack) in enumerate(RACKS.items()):
        node = make_node_row(world, name=name, rack=rack, gpus=i % 3)
        if name == "n-05":
            world.session.add(Lease(tenant_id=world.a.id, node_id=node.id, starts_at=datetime(2026, 1, 1, tzinfo=UTC),
                                    created_by="t"))
    world.session.commit()
    yield (principal_for_user(world.session, world.callers["admin"].user),
           principal_for_user(world.session, world.callers["a_member"].user))
    node_grid.forget()


def _names(block: dict) -> list[str]:
    return [row["name"] for row in block["rowData"]]


def test_pages_in_name_order_by_default_and_either_way(world: World, callers) -> None:
    admin, _ = callers
    first = rows_block(world.session, admin, {"startRow": 0, "endRow": 4})
    assert (_names(first), first["rowCount"]) == (["n-01", "n-02", "n-03", "n-04"], 6)
    assert _names(rows_block(world.session, admin, {"startRow": 4, "endRow": 8})) == ["n-05", "n-06"]
    by_name_desc = {"startRow": 0, "endRow": 3, "sortModel": [{"colId": "link", "sort": "desc"}]}
    assert _names(rows_block(world.session, admin, by_name_desc)) == ["n-06", "n-05", "n-04"]
    row = first["rowData"][0]
    assert (row["rack"], row["gpus"], row["tenant"], row["vdc"]) == ("r2", 0, "—", "—")  # the columns the grid had


def test_sorts_filters_and_searches_every_column(world: World, callers) -> None:
    admin, _ = callers
    by_rack = {"startRow": 0, "endRow": 10, "sortModel": [{"colId": "rack", "sort": "asc"}, {"colId": "link", "sort": "desc"}]}
    assert _names(rows_block(world.session, admin, by_rack)) == ["n-05", "n-02", "n-03", "n-01", "n-06", "n-04"]  # "—" last
    many_gpus = {"startRow": 0, "endRow": 10,
                 "filterModel": {"gpus": {"filterType": "number", "type": "greaterThanOrEqual", "filter": 1}}}
    assert _names(rows_block(world.session, admin, many_gpus)) == ["n-02", "n-03", "n-05", "n-06"]
    either_rack = {"startRow": 0, "endRow": 10, "filterModel": {"rack": {"filterType": "text", "operator": "OR", "conditions": [
        {"filterType": "text", "type": "equals", "filter": "R1"}, {"filterType": "text", "type": "startsWith", "filter": "r3"}]}}}
    block = rows_block(world.session, admin, either_rack)
    assert (_names(block), block["rowCount"]) == (["n-02", "n-05", "n-06"], 3)
    assert _names(rows_block(world.session, admin, {"startRow": 0, "endRow": 10}, "tenant-a")) == ["n-05"]  # lease holder
    assert _names(rows_block(world.session, admin, {"startRow": 0, "endRow": 10}, "R2 n-0")) == ["n-01", "n-03"]
    assert rows_block(world.session, admin, {"startRow": 0, "endRow": 10}, "nowhere")["rowCount"] == 0


def test_a_tenant_pages_only_through_their_nodes(world: World, callers) -> None:
    _, member = callers
    for request, search in (({"startRow": 0, "endRow": 50}, None), ({"startRow": 0, "endRow": 50}, "n-0"),
                            ({"startRow": 0, "endRow": 50, "sortModel": [{"colId": "rack", "sort": "desc"}]}, None),
                            ({"startRow": 1, "endRow": 50}, None)):
        block = rows_block(world.session, member, request, search)
        assert block["rowCount"] == 1 and _names(block) in (["n-05"], []), (request, search)
        assert all(row["tenant"] == "" and row["vdc"] == "" for row in block["rowData"])


def test_the_summary_above_the_table_counts_what_the_rows_say(world: World, callers) -> None:
    from collections import Counter

    from collectors.models import HealthSnapshot
    from dashboards.fleet_data import fleet_summary, node_rows
    from fleet.models import Node
    from sqlmodel import select

    ids = dict(world.session.exec(select(Node.name, Node.id)).all())
    now = datetime(2026, 3, 1, tzinfo=UTC)
    watts, celsius = "ipmi_dcmi_power_consumption_watts", "ipmi_temperature_celsius"
    readings = [("n-01", watts, "", 810.5, None), ("n-05", watts, "", 990.0, None),
                ("n-05", celsius, "sensor=cpu0", 71.0, 1), ("n-05", celsius, "sensor=cpu1", 64.0, 0),
                ("n-02", celsius, "sensor=cpu0", 88.0, 2), ("n-03", celsius, "sensor=cpu0", 40.0, 0)]
    for name, metric, labels, value, state in readings:
        world.session.add(HealthSnapshot(entity=name, node_id=ids[name], source="ipmi", metric=metric, labels_key=labels,
                                         value=value, unit="x", state=state, observed_at=now))
    world.session.commit()
    for principal in callers:
        rows, summary = node_rows(world.session, principal), fleet_summary(world.session, principal)
        drawn = [r["power_watts"] for r in rows if r["power_watts"] is not None]
        hot = sorted((r for r in rows if r["max_temp_c"] is not None), key=lambda r: (-r["max_temp_c"], r["name"]))
        assert summary == {"nodes": len(rows), "states": dict(Counter(r["provision_state"] for r in rows)),
                           "health": dict(Counter(r["health"] for r in rows).most_common()),
                           "watts": sum(drawn) if drawn else None,
                           "hottest": [{"name": r["name"], "max_temp_c": r["max_temp_c"]} for r in hot]}
    admin, member = (fleet_summary(world.session, p) for p in callers)
    assert admin["health"] == {"unknown": 3, "ok": 1, "warning": 1, "critical": 1} and admin["watts"] == 1800.5
    assert member == {"nodes": 1, "states": {"active": 1}, "health": {"warning": 1}, "watts": 990.0,
                      "hottest": [{"name": "n-05", "max_temp_c": 71.0}]}  # their node only


def _all_pages(session, principal, filter_model: dict, search: str | None, size: int = 2) -> tuple[list[str], int]:
    """Every row the grid shows for a query, page by page as it asks, and the count it is told."""
    names, start, count = [], 0, None
    while count is None or start < count:
        block = rows_block(session, principal, {"startRow": start, "endRow": start + size, "filterModel": filter_model,
                                                "sortModel": [{"colId": "rack", "sort": "desc"}]}, search)
        names, start, count = names + _names(block), start + size, block["rowCount"]
    return names, count


def test_all_matching_nodes_are_the_rows_the_grid_pages_through(world: World, callers) -> None:
    from dashboards.bulk_all import target_nodes

    admin, member = callers
    some_gpus = {"gpus": {"filterType": "number", "type": "greaterThanOrEqual", "filter": 1}}
    for filter_model, search, expected in (({}, None, list(RACKS)), ({}, "r2", ["n-01", "n-03"]),
                                           (some_gpus, None, ["n-02", "n-03", "n-05", "n-06"]),
                                           (some_gpus, "r1", ["n-02", "n-05"]), (some_gpus, "nowhere", [])):
        shown, count = _all_pages(world.session, admin, filter_model, search)
        matching = node_grid.matching_names(world.session, admin, search, filter_model)
        assert matching == sorted(shown) == expected and count == len(matching), (filter_model, search)
        query = {"search": search or "", "filterModel": filter_model, "count": count}
        assert [n.name for n in target_nodes(world.session, admin, [], True, query)] == expected
    ticked = [{"name": "n-06"}, {"name": "n-01"}]  # the box not ticked: the rows ticked, whatever the query
    assert [n.name for n in target_nodes(world.session, admin, ticked, False, {"search": "r2", "filterModel": {}})] == ["n-01", "n-06"]
    for search in (None, "n-0", "r1"):  # a tenant's "all" is their own node, never the fleet
        assert node_grid.matching_names(world.session, member, search, {}) == ["n-05"]
        assert [n.name for n in target_nodes(world.session, member, [], True, {"search": search})] == ["n-05"]
    assert node_grid.matching_names(world.session, member, None, {"rack": {"filterType": "text", "type": "equals",
                                                                           "filter": "r2"}}) == []


def test_all_matching_asks_first_from_many_nodes_and_again_if_they_changed() -> None:
    from dashboards.bulk_all import CONFIRM_FROM, confirmation, label

    many = CONFIRM_FROM
    assert confirmation(True, many - 1, "power_off", "Power off", False, None) is None
    assert confirmation(False, 500, "power_off", "Power off", False, None) is None  # rows ticked one by one
    assert confirmation(True, 1234, "power_off", "Power off", False, None) == \
        "Power off on all 1,234 nodes matching the table's search and filters?"
    assert confirmation(True, many, "power_off", "Power off", True, {"action": "power_off", "count": many}) is None
    assert confirmation(True, many + 1, "power_off", "Power off", True, {"action": "power_off", "count": many}) \
        .startswith("The matching nodes changed since you confirmed.")
    assert label({"search": "", "filterModel": {}, "count": 10000}) == "Apply to all 10,000 nodes"
    assert label({"search": "r1", "filterModel": {}, "count": 1}) == "Apply to all 1 matching node"
