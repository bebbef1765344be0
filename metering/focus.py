"""FOCUS 1.2 export: one `FocusRow` per charge, streamed to CSV or Parquet.

`write_focus` consumes any iterable of rows (a generator over a year of charges is fine): CSV is
written row by row; Parquet rows are converted to Arrow every `CHUNK_ROWS` rows and written as
row groups of `batch_rows`, so memory stays bounded by one row group whatever the number of rows.

How values are written (the same rules the README's "FOCUS export" section gives finance):
- columns: every FOCUS 1.2 column Kiln exports (`focus_columns.FOCUS_COLUMNS`), in the
  specification's alphabetical order, then the custom `x_` columns in the order given;
- NULL: an empty CSV field; a Parquet null. Empty strings are never written for a value;
- Date/Time: UTC, `YYYY-MM-DDTHH:mm:ssZ` in CSV; `timestamp[us, tz=UTC]` in Parquet;
- Decimal: plain decimal notation, always with a decimal point (`384.0`, never `384` or `3.8E+2`)
  in CSV; `decimal128(38, 18)` in Parquet (values finer than 18 decimal places are refused);
- JSON (Tags, SkuPriceDetails): a flat JSON object as text; Decimal values become JSON numbers.

A `FocusRow` checks on construction the FOCUS rules the official validator cannot see or is lax
about (allowed values row by row, nullability pairs, and — on every row that is not a correction —
`ListCost = ListUnitPrice × PricingQuantity` and `ContractedCost = ContractedUnitPrice ×
PricingQuantity` exactly: FOCUS 1.2 ListCost-C-009-C / ContractedCost-C-009-C, which the validator
skips when ChargeClass is NULL). Rounded, invoiced amounts belong in BilledCost and EffectiveCost
(see `metering.exports` for Kiln's rounding rule; `metering.focus_rules` checks written files).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO, Literal

from metering.focus_columns import (
    DATETIME,
    DECIMAL,
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    FOCUS_COLUMN_NAMES,
    FOCUS_COLUMNS,
    SUB_ACCOUNT_TYPE,
    FocusRowError,
    JsonScalar,
    check_custom_columns,
    check_row,
)

DEFAULT_BATCH_ROWS = 50_000  # rows per Parquet row group
CHUNK_ROWS = 2_048  # rows held as Python objects before they are converted to Arrow


@dataclass(frozen=True, slots=True)
class FocusRow:
    """One charge in Kiln's terms; `write_focus` maps it onto the FOCUS 1.2 columns.

    Mapping: tenant_slug/tenant_name → SubAccountId/SubAccountName (SubAccountType "Tenant");
    provider_name (the operator) → ProviderName, PublisherName and InvoiceIssuerName;
    invoice_id → InvoiceId (the bill the charge is on; None when it is on no bill);
    currency → BillingCurrency; region_id/region_name → RegionId/RegionName (site or rack);
    extra → the custom `x_` columns (string values). Commitment-discount and capacity-reservation
    columns are always NULL. Datetimes must be timezone-aware and whole seconds; they are stored in UTC.
    """

    billing_period_start: datetime
    billing_period_end: datetime
    charge_period_start: datetime
    charge_period_end: datetime
    billing_account_id: str
    billing_account_name: str
    provider_name: str
    tenant_slug: str | None
    tenant_name: str | None
    charge_category: str
    charge_description: str | None
    service_name: str
    resource_id: str | None
    resource_name: str | None
    resource_type: str | None
    sku_id: str | None
    sku_price_id: str | None
    pricing_unit: str | None
    pricing_quantity: Decimal | None
    consumed_unit: str | None
    consumed_quantity: Decimal | None
    list_unit_price: Decimal | None
    contracted_unit_price: Decimal | None
    list_cost: Decimal
    contracted_cost: Decimal
    effective_cost: Decimal
    billed_cost: Decimal
    currency: str
    charge_class: str | None = None
    charge_frequency: str = "Usage-Based"
    pricing_category: str | None = "Standard"
    service_category: str = "Compute"
    service_subcategory: str = "Virtual Machines"
    region_id: str | None = None
    region_name: str | None = None
    sku_meter: str | None = None
    sku_price_details: Mapping[str, JsonScalar] | None = None
    invoice_id: str | None = None
    tags: Mapping[str, JsonScalar] | None = None
    extra: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_row(self)

    def to_record(self) -> dict[str, Any]:
        """FOCUS column → value (str, Decimal, UTC datetime, JSON text or None), then the `x_` columns."""
        record = dict(zip(FOCUS_COLUMN_NAMES, _focus_values(self), strict=True))
        record.update(self.extra)
        return record


def focus_header(extra_columns: Sequence[str] = ()) -> list[str]:
    """The column names `write_focus` writes: the FOCUS columns, then `extra_columns`."""
    return [*FOCUS_COLUMN_NAMES, *check_custom_columns(extra_columns)]


def write_focus(
    rows: Iterable[FocusRow],
    fmt: Literal["csv", "parquet"],
    out: BinaryIO | Path | str,
    *,
    extra_columns: Sequence[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> int:
    """Stream `rows` to `out` as FOCUS 1.2 CSV or Parquet; return the number of rows written.

    `out` is a path (replaced only once the whole file is written: after an error it is left as
    it was) or a binary stream (left open). The custom columns are `extra_columns`, or, when None,
    the `extra` keys of the first row; a row with an `x_` key outside them is refused
    (FocusRowError), a missing one is NULL. At most one Parquet row group (`batch_rows` rows, as
    Arrow data) is held in memory.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown FOCUS export format {fmt!r}: use 'csv' or 'parquet'")
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    iterator = iter(rows)
    first = next(iterator, None)
    if extra_columns is None:
        extra_columns = list(first.extra) if first is not None else []
    extras = check_custom_columns(extra_columns)
    stream_rows = chain([first], iterator) if first is not None else iter(())
    out = Path(out) if isinstance(out, str) else out
    if not isinstance(out, Path):
        if fmt == "parquet":
            return _write_parquet(stream_rows, extras, out, batch_rows)
        return _write_csv(stream_rows, extras, out)
    partial = out.with_name(out.name + ".partial")  # `out` appears complete or not at all
    try:
        if fmt == "parquet":  # pyarrow writes a path natively, without passing bytes through Python
            count = _write_parquet(stream_rows, extras, str(partial), batch_rows)
        else:
            with partial.open("wb") as stream:
                count = _write_csv(stream_rows, extras, stream)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return count


def format_datetime(value: datetime) -> str:
    """A UTC datetime as FOCUS writes it: `YYYY-MM-DDTHH:mm:ssZ`."""
    return _datetime_text(value)


def format_decimal(value: Decimal) -> str:
    """A Decimal as FOCUS CSV writes it: plain notation, always with a decimal point, no `-0`."""
    text = format(value, "f")
    if "." not in text:
        text += ".0"
    if text[0] == "-" and value.is_zero():
        text = text[1:]
    return text


# --- writers ---------------------------------------------------------------------------------

_DECIMAL_INDEXES = [i for i, (_, kind) in enumerate(FOCUS_COLUMNS) if kind == DECIMAL]
_DATETIME_INDEXES = [i for i, (_, kind) in enumerate(FOCUS_COLUMNS) if kind == DATETIME]


def _write_csv(rows: Iterator[FocusRow], extras: list[str], stream: BinaryIO) -> int:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    writer = csv.writer(text, lineterminator="\n")  # None is written as an empty field: NULL
    writer.writerow([*FOCUS_COLUMN_NAMES, *extras])
    count, parents = 0, {}
    for row in rows:
        cells = [*_focus_values(row), *_extra_values(row, extras, parents)]
        for i in _DECIMAL_INDEXES:
            if cells[i] is not None:
                cells[i] = format_decimal(cells[i])
        for i in _DATETIME_INDEXES:
            cells[i] = _datetime_text(cells[i])
        writer.writerow(cells)
        count += 1
    text.flush()
    text.detach()  # leave the caller's stream open
    return count


def _write_parquet(rows: Iterator[FocusRow], extras: list[str], stream: BinaryIO | str, batch_rows: int) -> int:
    """Rows become Arrow record batches every CHUNK_ROWS (bounding the Python objects held); a
    row group of `batch_rows` rows is written whenever that many are converted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(extras)
    chunk_rows = min(CHUNK_ROWS, batch_rows)
    count, parents = 0, {}
    converted: list[Any] = []
    with pq.ParquetWriter(stream, schema, compression="zstd") as writer:
        chunk: list[tuple[Any, ...]] = []
        for row in rows:
            chunk.append((*_focus_values(row), *_extra_values(row, extras, parents)))
            if len(chunk) >= chunk_rows:
                converted.append(_record_batch(schema, chunk))
                count += len(chunk)
                chunk = []
                if sum(batch.num_rows for batch in converted) >= batch_rows:
                    writer.write_table(pa.Table.from_batches(converted), row_group_size=batch_rows)
                    converted = []
        if chunk or count == 0:
            converted.append(_record_batch(schema, chunk))
            count += len(chunk)
        if converted:
            writer.write_table(pa.Table.from_batches(converted), row_group_size=batch_rows)
    return count


def _record_batch(schema: Any, chunk: list[tuple[Any, ...]]) -> Any:
    import pyarrow as pa

    columns = list(zip(*chunk)) if chunk else [()] * len(schema)
    arrays = []
    for values, column in zip(columns, schema):
        try:
            arrays.append(pa.array(values, column.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise FocusRowError(f"FOCUS column {column.name} cannot be written as {column.type}: {exc}") from None
    return pa.record_batch(arrays, schema=schema)


def _extra_values(row: FocusRow, extras: list[str], parents: dict[str, str | None]) -> list[str | None]:
    """The row's custom column values; checks the rules that span rows (FocusRowError)."""
    if len(row.extra) > len(extras) or any(name not in extras for name in row.extra):
        unknown = [name for name in row.extra if name not in extras]
        raise FocusRowError(f"custom columns {unknown} are not among this export's columns {extras}")
    if row.sku_price_id is not None and parents.setdefault(row.sku_price_id, row.sku_id) != row.sku_id:
        raise FocusRowError(f"SkuPriceId {row.sku_price_id!r} belongs to SkuId {parents[row.sku_price_id]!r}, "
                            f"not also to {row.sku_id!r} (FOCUS: one parent SkuId per SkuPriceId)")
    return [row.extra.get(name) for name in extras]


def parquet_schema(extra_columns: Sequence[str] = ()) -> Any:
    """The Arrow schema of Kiln's FOCUS Parquet files (custom columns are strings)."""
    import pyarrow as pa

    arrow = {DECIMAL: pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE), DATETIME: pa.timestamp("us", tz="UTC")}
    fields = [pa.field(name, arrow.get(kind, pa.string())) for name, kind in FOCUS_COLUMNS]
    fields += [pa.field(name, pa.string()) for name in check_custom_columns(extra_columns)]
    return pa.schema(fields, metadata={"focus_version": "1.2"})


def _focus_values(r: FocusRow) -> tuple[Any, ...]:
    """The row's values in `FOCUS_COLUMNS` order (typed: str, Decimal, datetime, JSON text, None)."""
    return (
        r.billed_cost, r.billing_account_id, r.billing_account_name, r.currency,
        r.billing_period_end, r.billing_period_start,
        None, None,  # CapacityReservationId, CapacityReservationStatus
        r.charge_category, r.charge_class, r.charge_description, r.charge_frequency,
        r.charge_period_end, r.charge_period_start,
        None, None, None, None, None, None, None,  # CommitmentDiscount Category … Unit
        r.consumed_quantity, r.consumed_unit, r.contracted_cost, r.contracted_unit_price, r.effective_cost,
        r.invoice_id, r.provider_name, r.list_cost, r.list_unit_price, r.pricing_category,
        r.pricing_quantity, r.pricing_unit, r.provider_name, r.provider_name,
        r.region_id, r.region_name, r.resource_id, r.resource_name, r.resource_type,
        r.service_category, r.service_name, r.service_subcategory,
        r.sku_id, r.sku_meter, _json_object(r.sku_price_details), r.sku_price_id,
        r.tenant_slug, r.tenant_name, SUB_ACCOUNT_TYPE if r.tenant_slug is not None else None,
        _json_object(r.tags),
    )


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@lru_cache(maxsize=8192)
def _datetime_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_object(mapping: Mapping[str, JsonScalar] | None) -> str | None:
    if mapping is None:
        return None
    if not any(type(value) is Decimal for value in mapping.values()):
        return _JSON.encode(dict(mapping))
    return "{" + ",".join(f"{_JSON.encode(k)}:{_json_scalar(v)}" for k, v in mapping.items()) + "}"


def _json_scalar(value: JsonScalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    return _JSON.encode(value)
