"""`ExactNumeric`: a decimal column that stays exact on SQLite as well as on PostgreSQL;
`exact_sum`: a SUM of big integers that stays exact (never overflows) on both.

PostgreSQL stores NUMERIC(p, s) exactly. SQLite has no decimal type, and SQLAlchemy's
`Numeric` stores floats there — not acceptable for money. On SQLite this type stores a 64-bit
integer count of 10^-s units instead (micro-units for scale 6), so values and SQL `SUM`s are
exact integers; Python always sees `Decimal`. A value finer than the scale is refused on both
databases, never silently rounded.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Numeric
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import NullType, TypeDecorator


class ExactNumeric(TypeDecorator):
    """NUMERIC(precision, scale) on PostgreSQL; integer units of 10^-scale on SQLite."""

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int):
        super().__init__(precision=precision, scale=scale)
        self.precision, self.scale = precision, scale

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(self.precision, self.scale))

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        value = Decimal(value) if not isinstance(value, Decimal) else value
        units = value.scaleb(self.scale)
        if units != units.to_integral_value():  # PostgreSQL would round it silently; SQLite could not store it
            raise ValueError(f"{value} has more than {self.scale} decimal places")
        return int(units) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-self.scale)
        return value if isinstance(value, Decimal) else Decimal(str(value))


SPLIT = 1 << 32  # exact_sum on SQLite: sums the high and low parts apart


class exact_sum(FunctionElement):  # noqa: N801 - used like sqlalchemy's func.sum
    """`SUM(column)` of a BigInteger column that is exact however large the total.

    PostgreSQL's SUM of a bigint is NUMERIC: exact, no overflow. SQLite's SUM of integers fails
    with "integer overflow" beyond 2^63 (and its integer arithmetic silently turns to REAL), so
    there it sums `column / 2^32` and `column % 2^32` apart and returns both as text, 'HIGH:LOW'.
    Read a result with `sum_value`; NULL (no rows) stays None.
    """

    type = NullType()
    inherit_cache = True
    name = "exact_sum"


@compiles(exact_sum)
def _exact_sum(element: exact_sum, compiler: Any, **kw: Any) -> str:
    return f"SUM({compiler.process(element.clauses, **kw)})"


@compiles(exact_sum, "sqlite")
def _exact_sum_sqlite(element: exact_sum, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"(SUM({column} / {SPLIT}) || ':' || SUM({column} % {SPLIT}))"


def sum_value(value: object) -> int | None:
    """An `exact_sum` result as an int: 'HIGH:LOW' text from SQLite, a number from PostgreSQL."""
    if value is None:
        return None
    if isinstance(value, str):
        high, _, low = value.partition(":")
        return int(high) * SPLIT + int(low)
    return int(value)  # type: ignore[call-overload]
