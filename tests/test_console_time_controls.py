"""The live pages' time controls: custom dates beside the presets, "last updated", auto-refresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dash import no_update

from dashboards.time_controls import CUSTOM, bounds, choose_custom, refresh_paused, updated

NOW = datetime(2026, 3, 10, 14, 5, 9, tzinfo=UTC)


def test_custom_dates_are_whole_utc_days_with_the_end_day_included() -> None:
    assert bounds(CUSTOM, "2026-03-01", "2026-03-02", NOW) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))
    assert bounds(CUSTOM, "2026-03-05", "2026-03-01T00:00:00", NOW)[0] == datetime(2026, 3, 1, tzinfo=UTC)  # either order
    assert bounds(CUSTOM, "2026-03-09", "2026-03-10", NOW) == (datetime(2026, 3, 9, tzinfo=UTC), NOW)  # never past now
    assert bounds(CUSTOM, "2026-03-12", "2026-03-13", NOW) == (datetime(2026, 3, 12, tzinfo=UTC),) * 2  # the future: empty


def test_presets_end_now_and_custom_without_both_dates_is_the_default_preset() -> None:
    assert bounds("6h", "2026-03-01", "2026-03-02", NOW) == (NOW - timedelta(hours=6), NOW)  # a preset wins over old dates
    assert bounds(CUSTOM, "2026-03-01", None, NOW) == (NOW - timedelta(hours=24), NOW)


def test_picking_dates_selects_custom_and_the_toggle_drives_the_interval() -> None:
    assert choose_custom("2026-03-01", "2026-03-02") == CUSTOM
    assert choose_custom("2026-03-01", None) is no_update
    assert refresh_paused(0) == refresh_paused(None) == refresh_paused(2) == (True, "false")
    assert refresh_paused(1) == (False, "true")
    assert updated(NOW) == "last updated 14:05:09 UTC"
