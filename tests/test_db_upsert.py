"""kiln.db.upsert stores the same rows however it sends them: as arrays (PostgreSQL, distinct keys),
row by row (SQLite; rows sharing their keys), with the columns' defaults and mixed number types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

from collectors.models import CollectorTargetState, HealthSnapshot, Rollup5m
from kiln.db import upsert

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def snapshot(entity: str, metric: str, value, labels: dict | None = None, state=None, ts=T0) -> dict:
    labels = labels or {}
    return {"entity": entity, "node_id": None, "source": "ipmi", "metric": metric,
            "labels_key": ",".join(f"{k}={v}" for k, v in sorted(labels.items())), "labels": labels,
            "value": value, "unit": "celsius", "state": state, "observed_at": ts}


def stored(session: Session) -> dict:
    return {(s.entity, s.metric, s.labels_key): (s.value, s.state, s.labels, s.observed_at, s.source)
            for s in session.exec(select(HealthSnapshot))}


def test_upsert_inserts_then_updates_with_mixed_numbers_and_json(engine):
    rows = [snapshot("n1", "t_celsius", 40, {"id": "1", "name": "CPU \"1\""}, 0),  # an int in a FLOAT column
            snapshot("n1", "t_state", 1.0, {"id": "1"}), snapshot("n2", "t_celsius", None, {}, None)]
    with Session(engine) as session, session.begin():
        upsert(session, HealthSnapshot, rows, ("entity", "metric", "labels_key"),
               ("source", "labels", "value", "unit", "state", "observed_at"))
    later = T0 + timedelta(minutes=1)
    with Session(engine) as session, session.begin():
        upsert(session, HealthSnapshot, [snapshot("n1", "t_celsius", 41.5, {"id": "1", "name": "CPU \"1\""}, 2, later),
                                         snapshot("n3", "t_celsius", 7, {}, None, later)],
               ("entity", "metric", "labels_key"), ("source", "labels", "value", "unit", "state", "observed_at"))
    with Session(engine) as session:
        assert stored(session) == {
            ("n1", "t_celsius", 'id=1,name=CPU "1"'): (41.5, 2, {"id": "1", "name": 'CPU "1"'}, later, "ipmi"),
            ("n1", "t_state", "id=1"): (1.0, None, {"id": "1"}, T0, "ipmi"),
            ("n2", "t_celsius", ""): (None, None, {}, T0, "ipmi"),
            ("n3", "t_celsius", ""): (7.0, None, {}, later, "ipmi"),
        }


def test_upsert_rows_sharing_keys_apply_in_order_and_callables_fold(engine):
    bucket = T0.replace(minute=0)
    fold = lambda current, new: {"count": current.count + new.count, "sum": current.sum + new.sum}  # noqa: E731
    rows = [{"entity": "n1", "metric": "w", "bucket": bucket, "count": 1, "sum": 10.0, "min": 10.0, "max": 10.0},
            {"entity": "n2", "metric": "w", "bucket": bucket, "count": 2, "sum": 5, "min": 2.0, "max": 3.0}]
    with Session(engine) as session, session.begin():
        upsert(session, Rollup5m, rows, ("entity", "metric", "bucket"), fold)
        upsert(session, Rollup5m, rows + [rows[0]], ("entity", "metric", "bucket"), fold)  # n1 twice: row by row
    with Session(engine) as session:
        got = {r.entity: (r.count, r.sum) for r in session.exec(select(Rollup5m))}
    assert got == {"n1": (3, 30.0), "n2": (4, 10.0)}


def test_upsert_fills_left_out_columns_with_their_defaults_and_keeps_them_on_conflict(engine):
    with Session(engine) as session, session.begin():
        upsert(session, CollectorTargetState, [{"collector": "ipmi", "target": t} for t in ("a", "b")],
               ("collector", "target"), None)
        session.get(CollectorTargetState, session.exec(select(CollectorTargetState.id).where(
            CollectorTargetState.target == "a")).one()).lease_owner = "w1"
    with Session(engine) as session, session.begin():
        upsert(session, CollectorTargetState,
               [{"collector": "ipmi", "target": t, "up": True, "last_attempt_at": T0}
                for t in ("a", "b", "c")], ("collector", "target"), ("up", "last_attempt_at"))
    with Session(engine) as session:
        got = {r.target: (r.up, r.consecutive_failures, r.skipped, r.lease_owner, r.last_attempt_at)
               for r in session.exec(select(CollectorTargetState))}
    assert got == {"a": (True, 0, {}, "w1", T0), "b": (True, 0, {}, None, T0), "c": (True, 0, {}, None, T0)}
