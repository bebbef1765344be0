"""Exact money for metering: Decimal amounts, ISO 4217 currencies, and the one rounding rule.

**The rounding rule (stated once, used everywhere):** every line amount is computed exactly
as `quantity × unit price` (Decimal, unrounded), then rounded **half-even to the currency's
minor unit at the line** (cents for EUR/USD, whole yen for JPY, mils for KWD). A bill's total
is the sum of its rounded lines, so line totals always add up to the bill total to the cent.
Quantities keep 6 decimal places (hours to 3.6 ms); unit prices up to 9.

**Quantities are rounded once.** Usage is stored exactly, as an integer count of
1/3,600,000,000 of its unit (`PARTS_PER_UNIT`: for a per-hour unit, unit-microseconds, e.g.
GPU-microseconds), and summed as integers; a rated quantity (a bill line) is that sum converted
to the unit once, half-even to 6 decimal places (`quantity_from_parts`). Per-hour values are
never rounded and then added up, so 25,913.2 GPU-hours stay 25,913.2, not 25,913.199999.

Floats never touch money: inputs are parsed from strings into Decimal and stored as Numeric.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

QUANTITY_QUANTUM = Decimal("0.000001")
PARTS_PER_UNIT = 3_600_000_000  # stored usage: parts of a unit (a unit-hour is 3.6e9 unit-microseconds)
_PARTS_PER_QUANTUM = PARTS_PER_UNIT // 1_000_000  # parts in 0.000001 of a unit
MAX_AMOUNT = Decimal(10) ** 14  # what Numeric(20, 6) and Numeric(24, 9) columns hold

# Active ISO 4217 codes by number of minor-unit digits (ISO 4217 list one, 2024 edition).
_MINOR_UNITS: dict[int, str] = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
    2: (
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD "
        "CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL "
        "GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD "
        "LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN "
        "PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL "
        "THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL"
    ),
}
MINOR_UNITS: dict[str, int] = {code: digits for digits, codes in _MINOR_UNITS.items() for code in codes.split()}


class MoneyError(ValueError):
    """An amount or currency that is not acceptable; the message says why."""


def check_currency(code: str) -> str:
    """`code` upper-cased if it is an active ISO 4217 currency; MoneyError otherwise."""
    upper = (code or "").strip().upper()
    if upper not in MINOR_UNITS:
        raise MoneyError(f"unknown currency {code!r}: use an ISO 4217 code such as EUR or USD")
    return upper


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of `currency`, e.g. Decimal('0.01') for EUR, Decimal('1') for JPY."""
    return Decimal(1).scaleb(-MINOR_UNITS[check_currency(currency)])


def round_amount(amount: Decimal, currency: str) -> Decimal:
    """THE rounding rule: half-even to the currency's minor unit."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_EVEN)


def round_quantity(quantity: Decimal) -> Decimal:
    """A usage quantity at storage precision (6 decimal places, half-even)."""
    return quantity.quantize(QUANTITY_QUANTUM, rounding=ROUND_HALF_EVEN)


def quantity_from_parts(parts: int) -> Decimal:
    """An exact count of 1/`PARTS_PER_UNIT` units as a quantity: half-even to 6 decimal places,
    computed in integers (no intermediate rounding), e.g. 93,287,520,000,000 → 25913.200000."""
    micro_units, remainder = divmod(int(parts), _PARTS_PER_QUANTUM)
    twice = 2 * remainder
    if twice > _PARTS_PER_QUANTUM or (twice == _PARTS_PER_QUANTUM and micro_units % 2):
        micro_units += 1
    return Decimal(micro_units).scaleb(-6)


def parse_decimal(text: object, what: str, *, allow_negative: bool = False, places: int = 9) -> Decimal:
    """A finite Decimal of at most `places` decimal places from a string or number (never via
    float); MoneyError naming `what` otherwise."""
    if isinstance(text, float):
        text = repr(text)
    try:
        value = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        raise MoneyError(f"{what} {text!r} is not a number") from None
    if not value.is_finite():
        raise MoneyError(f"{what} {text!r} is not a finite number")
    if value < 0 and not allow_negative:
        raise MoneyError(f"{what} {text!r} must not be negative")
    if abs(value) >= MAX_AMOUNT:
        raise MoneyError(f"{what} {text!r} is too large")
    if value != value.quantize(Decimal(1).scaleb(-places)):
        raise MoneyError(f"{what} {text!r} has more than {places} decimal places")
    return value


def allocate(total: Decimal, weights: Sequence[Decimal], currency: str) -> list[Decimal]:
    """Split `total` over `weights` in minor units so the parts sum exactly to `total`.

    Largest-remainder method: each part is floored to the minor unit, then the units left over
    go to the largest remainders (ties to the earlier weight). All weights zero: all parts zero
    (nothing is allocated, the caller keeps `total`).
    """
    unit = minor_unit(currency)
    weight_sum = sum(weights, Decimal(0))
    if weight_sum <= 0 or not weights:
        return [Decimal(0).quantize(unit) for _ in weights]
    units_total = int((total / unit).to_integral_value(rounding=ROUND_HALF_EVEN))
    exact = [Decimal(units_total) * w / weight_sum for w in weights]
    floors = [int(e) if e >= 0 else int(e) - (e != int(e)) for e in exact]
    left = units_total - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[: max(left, 0)]:
        floors[i] += 1
    return [(Decimal(f) * unit).quantize(unit) for f in floors]


def plain(value: Decimal) -> Decimal:
    """`value` without trailing zeros and never in exponent notation (15.000000 → 15, 100 → 100)."""
    normal = Decimal(value).normalize()
    return normal.quantize(Decimal(1)) if normal.as_tuple().exponent > 0 else normal
