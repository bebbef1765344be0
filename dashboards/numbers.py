"""How the console writes numbers: one place for money, prices, quantities and shares.

Thousands separated, fixed decimals: money at its currency's minor unit (`metering.money`:
cents for EUR, whole yen), unit prices to at least that and at most 6 decimals, quantities at the
decimals of their unit (`UNIT_DECIMALS`: hours to 2, kWh to 3), shares as whole or one-decimal
percent. Money is Decimal throughout, never float. Missing values read as a dash.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from metering.money import MINOR_UNITS

DASH = "—"
PRICE_MAX_DECIMALS = 6
DEFAULT_DECIMALS = 2
UNIT_DECIMALS = {"Hours": 2, "GPU-Hours": 2, "Core-Hours": 2, "GiB-Hours": 2, "kWh": 3, "GiB-Months": 2, "Share": 4,
                 "kg CO2e": 3}
SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "CHF": "CHF "}


def _fixed(value: Decimal, decimals: int) -> str:
    return f"{Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN):,.{decimals}f}"


def money(amount: Decimal | None, currency: str) -> str:
    """An amount with its currency's symbol (or code), at its minor unit: `€1,234.50`, `-$3.00`, `1,200 ISK`."""
    if amount is None:
        return DASH
    digits = MINOR_UNITS.get(currency, DEFAULT_DECIMALS)
    shown = _fixed(abs(Decimal(amount)), digits)
    sign = "-" if Decimal(amount) < 0 else ""
    symbol = SYMBOLS.get(currency)
    return f"{sign}{symbol}{shown}" if symbol else f"{sign}{shown} {currency}"


def unit_price(price: Decimal | None, currency: str) -> str:
    """A unit price: at least the currency's minor unit of decimals, more where the price has them (up to 6)."""
    if price is None:
        return DASH
    digits = MINOR_UNITS.get(currency, DEFAULT_DECIMALS)
    exponent = -Decimal(price).normalize().as_tuple().exponent
    decimals = min(max(digits, int(exponent) if exponent > 0 else 0), PRICE_MAX_DECIMALS)
    shown = _fixed(abs(Decimal(price)), decimals)
    symbol = SYMBOLS.get(currency)
    sign = "-" if Decimal(price) < 0 else ""
    return f"{sign}{symbol}{shown}" if symbol else f"{sign}{shown} {currency}"


def quantity(value: Decimal | int | None, unit: str = "") -> str:
    """A quantity at its unit's decimals (`UNIT_DECIMALS`, 2 otherwise), thousands separated, unit after."""
    if value is None:
        return DASH
    shown = _fixed(Decimal(value), UNIT_DECIMALS.get(unit, DEFAULT_DECIMALS))
    return f"{shown} {unit}" if unit else shown


def percent(value: Decimal | None, decimals: int = 1) -> str:
    """A percentage given in percent (`12.5` → `12.5 %`)."""
    return DASH if value is None else f"{_fixed(Decimal(value), decimals)} %"
