"""`ExactNumeric`: a decimal column that stays exact on SQLite as well as on PostgreSQL.

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
from sqlalchemy.types import TypeDecorator


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
