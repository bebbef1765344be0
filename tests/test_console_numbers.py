"""How the console writes SKUs and numbers: human SKU names, money at the currency's minor unit,
prices, quantities at their unit's decimals."""

from __future__ import annotations

from decimal import Decimal

from dashboards.numbers import money, percent, quantity, unit_price
from metering import skus
from metering.sku_labels import label

D = Decimal


def test_skus_read_as_names() -> None:
    assert label(skus.gpu_hour("NVIDIA H100 80GB HBM3")) == "GPU-hour · NVIDIA H100 80GB HBM3"
    assert label("gpu-hour:NVIDIA H100 80GB HBM3:3g.40gb") == "GPU-hour · NVIDIA H100 80GB HBM3 · 3g.40gb"
    assert label(skus.KWH) == "Energy (kWh)"
    assert label(skus.CPU_CORE_HOUR) == "CPU core-hour"
    assert label(skus.node_hour(None)) == "Node-hour"
    assert label(skus.node_hour("gpu.h100")) == "Node-hour · gpu.h100"
    assert label(skus.IDLE_SHARE) == "Share of idle capacity"
    assert label("tape-hour:lto9") == "tape-hour:lto9"  # unknown: as it is


def test_money_has_separators_symbol_and_the_currencys_decimals() -> None:
    assert money(D("1234567.5"), "EUR") == "€1,234,567.50"
    assert money(D("-3"), "USD") == "-$3.00"
    assert money(D("1200.4"), "JPY") == "¥1,200"
    assert money(D("12.3456"), "KWD") == "12.346 KWD"  # 3 minor digits, no symbol known: the code
    assert money(D("0.005"), "EUR") == "€0.00"  # half-even, as metering rounds
    assert money(None, "EUR") == "—"


def test_prices_keep_their_decimals_and_quantities_their_units() -> None:
    assert unit_price(D("2.19"), "EUR") == "€2.19"
    assert unit_price(D("1.971"), "EUR") == "€1.971"
    assert unit_price(D("2"), "USD") == "$2.00"
    assert unit_price(D("0.000123456789"), "EUR") == "€0.000123"
    assert quantity(D("25913.2"), "GPU-Hours") == "25,913.20 GPU-Hours"
    assert quantity(D("1.23456"), "kWh") == "1.235 kWh"
    assert quantity(D(1234)) == "1,234.00"
    assert percent(D("12.34")) == "12.3 %"
