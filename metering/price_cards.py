"""Price cards: effective-dated list prices per SKU, and their CSV import.

A card prices one SKU over [effective_from, effective_to) (open-ended when effective_to is
empty). Cards of one SKU never overlap, all cards share one currency (Kiln bills in one
currency), and a card may not be added, moved or removed over a period that already has a
finalised bill (billed history is immutable; change prices from the next open period on).
To change a price, end the current card and add a new one: the period is then rated with each
price for the hours it was in force.

CSV import (`kiln price-cards import FILE`, `POST /api/v1/price-cards/import`): header
`sku,unit,unit_price,currency,effective_from[,effective_to]`; every row is checked first and
nothing is stored if one is wrong; each problem names its row.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlmodel import Session, col, or_, select

from kiln import audit
from kiln.auth import Principal
from kiln.errors import Conflict, NotFound, ValidationFailed
from kiln.roles import Role
from kiln.validation import clean_message
from metering.models import Bill, PriceCard
from metering.money import MoneyError, check_currency, parse_decimal, plain
from metering.periods import period_bounds
from metering.skus import check_sku, unit_of

WRITE_ROLES = (Role.INFRA_ADMIN, Role.FINANCE)
CSV_COLUMNS = ("sku", "unit", "unit_price", "currency", "effective_from", "effective_to")
REQUIRED_COLUMNS = CSV_COLUMNS[:5]
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


class PriceCardCreate(BaseModel):
    """A new price card; `unit` defaults to the SKU's unit and must match it when given."""

    model_config = ConfigDict(extra="forbid")

    sku: str = Field(description="e.g. `gpu-hour:NVIDIA H100 80GB HBM3`, `node-hour:gpu.h100`, `kwh`.")
    unit: str | None = Field(default=None, max_length=32)
    unit_price: Decimal = Field(description="List price per unit, exact decimal (a string in JSON is best).")
    currency: str = Field(description="ISO 4217 code, e.g. EUR.")
    effective_from: AwareDatetime
    effective_to: AwareDatetime | None = None

    @field_validator("sku")
    @classmethod
    def _sku(cls, value: str) -> str:
        return check_sku(value)

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return check_currency(value)

    @field_validator("unit_price", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Decimal:
        return parse_decimal(value, "unit_price")

    @model_validator(mode="after")
    def _consistent(self) -> PriceCardCreate:
        expected = unit_of(self.sku)
        if self.unit is None:
            self.unit = expected
        elif self.unit != expected:
            raise ValueError(f"unit {self.unit!r} does not match SKU {self.sku!r}, which is counted in {expected!r}")
        if self.effective_to is not None and self.effective_to <= self.effective_from:
            raise ValueError("effective_to must be after effective_from")
        return self


class PriceCardUpdate(BaseModel):
    """A card's end can move (prices themselves never change: end the card and add a new one)."""

    model_config = ConfigDict(extra="forbid")

    effective_to: AwareDatetime | None


class PriceCardPublic(BaseModel):
    """A price card as the API returns it (prices as exact decimal strings)."""

    id: int
    sku: str
    unit: str
    unit_price: Decimal
    currency: str
    effective_from: datetime
    effective_to: datetime | None
    created_by: str

    @field_validator("unit_price")
    @classmethod
    def _plain(cls, value: Decimal) -> Decimal:
        return plain(value)


def list_cards(session: Session, *, sku: str | None = None, at: datetime | None = None) -> list[PriceCard]:
    """Price cards by SKU and start; optionally one SKU's, or only those in force at `at`."""
    statement = select(PriceCard).order_by(PriceCard.sku, PriceCard.effective_from)
    if sku:
        statement = statement.where(PriceCard.sku == sku)
    if at is not None:
        statement = statement.where(
            col(PriceCard.effective_from) <= at, or_(col(PriceCard.effective_to).is_(None), col(PriceCard.effective_to) > at)
        )
    return list(session.exec(statement).all())


def cards_overlapping(session: Session, start: datetime, end: datetime) -> list[PriceCard]:
    """Every card in force at some moment of [start, end)."""
    statement = select(PriceCard).where(
        col(PriceCard.effective_from) < end, or_(col(PriceCard.effective_to).is_(None), col(PriceCard.effective_to) > start)
    )
    return list(session.exec(statement.order_by(PriceCard.sku, PriceCard.effective_from)).all())


def get_card(session: Session, card_id: int) -> PriceCard:
    """One price card; NotFound otherwise."""
    card = session.get(PriceCard, card_id)
    if card is None:
        raise NotFound(f"price card {card_id} not found")
    return card


def _overlaps(a_from: datetime, a_to: datetime | None, b_from: datetime, b_to: datetime | None) -> bool:
    return a_from < (b_to or FAR_FUTURE) and b_from < (a_to or FAR_FUTURE)


def _finalised_period_within(session: Session, start: datetime, end: datetime | None) -> str | None:
    periods = session.exec(select(Bill.period).where(Bill.status == "finalised").distinct()).all()
    for period in sorted(periods):
        p_start, p_end = period_bounds(period)
        if _overlaps(start, end, p_start, p_end):
            return period
    return None


def _problems(
    session: Session, data: PriceCardCreate, others: list[PriceCard | PriceCardCreate], ignore_id: int | None = None,
) -> list[str]:
    problems = []
    stored = session.exec(select(PriceCard).where(PriceCard.sku == data.sku, col(PriceCard.id) != (ignore_id or -1))).all()
    for card in [*stored, *(o for o in others if o.sku == data.sku)]:
        if _overlaps(data.effective_from, data.effective_to, card.effective_from, card.effective_to):
            which = f"price card {card.id}" if isinstance(card, PriceCard) else "another row"
            until = f"{card.effective_to:%Y-%m-%dT%H:%M:%SZ}" if card.effective_to else "open-ended"
            problems.append(
                f"overlaps {which} for SKU {data.sku!r} ({card.effective_from:%Y-%m-%dT%H:%M:%SZ} to {until}): "
                "end that card first"
            )
            break
    currencies = set(session.exec(select(PriceCard.currency).distinct()).all())
    currencies |= {o.currency for o in others}
    if currencies and data.currency not in currencies:
        problems.append(f"currency {data.currency} differs from the price cards' {sorted(currencies)[0]}: Kiln bills in one currency")
    period = _finalised_period_within(session, data.effective_from, data.effective_to)
    if period:
        problems.append(f"its dates cover period {period}, which has finalised bills: price cards cannot change billed history")
    return problems


def create_card(session: Session, principal: Principal, data: PriceCardCreate) -> PriceCard:
    """Add a price card (infra-admin or finance); Conflict naming the clash when it overlaps or rewrites history."""
    principal.require_role(*WRITE_ROLES, action="change price cards")
    problems = _problems(session, data, [])
    if problems:
        raise Conflict(f"price card for {data.sku!r} refused: {problems[0]}")
    card = PriceCard(**data.model_dump(), created_by=principal.username)
    session.add(card)
    session.flush()
    audit.record(session, principal, "create", "price_card", card.id, detail={"sku": card.sku, "unit_price": str(card.unit_price)})
    return card


def update_card(session: Session, principal: Principal, card_id: int, data: PriceCardUpdate) -> PriceCard:
    """Move a card's end (to end it, or reopen it); refused when it would overlap or rewrite billed history."""
    principal.require_role(*WRITE_ROLES, action="change price cards")
    card = get_card(session, card_id)
    if data.effective_to is not None and data.effective_to <= card.effective_from:
        raise ValidationFailed("effective_to", "must be after effective_from")
    old_end, new_end = card.effective_to, data.effective_to
    changed_from = min(old_end or FAR_FUTURE, new_end or FAR_FUTURE)
    changed_to = max(old_end or FAR_FUTURE, new_end or FAR_FUTURE)
    if changed_from < changed_to:
        period = _finalised_period_within(session, changed_from, changed_to)
        if period:
            raise Conflict(f"price card {card_id} refused: the change covers period {period}, which has finalised bills")
    proposed = PriceCardCreate(sku=card.sku, unit=card.unit, unit_price=card.unit_price, currency=card.currency,
                               effective_from=card.effective_from, effective_to=new_end)
    clash = [p for p in _problems(session, proposed, [], ignore_id=card.id) if p.startswith("overlaps")]
    if clash:
        raise Conflict(f"price card {card_id} refused: {clash[0]}")
    card.effective_to = new_end
    session.add(card)
    session.flush()
    audit.record(session, principal, "update", "price_card", card.id, detail={"effective_to": str(new_end)})
    return card


def delete_card(session: Session, principal: Principal, card_id: int) -> None:
    """Remove a card that never priced a finalised period."""
    principal.require_role(*WRITE_ROLES, action="change price cards")
    card = get_card(session, card_id)
    period = _finalised_period_within(session, card.effective_from, card.effective_to)
    if period:
        raise Conflict(f"price card {card_id} priced period {period}, which has finalised bills: end it instead")
    audit.record(session, principal, "delete", "price_card", card.id, detail={"sku": card.sku})
    session.delete(card)
    session.flush()


class PriceCardImportError(ValidationFailed):
    """Rows of a price-card CSV that are wrong; `errors` lists `{field: "row N", message}`."""

    def __init__(self, problems: list[tuple[str, str]]):
        detail = "; ".join(f"{where}: {message}" for where, message in problems)
        super().__init__(problems[0][0], problems[0][1])
        self.detail = f"nothing imported: {detail}"
        self.args = (self.detail,)
        self.extensions = {"errors": [{"field": where, "message": message} for where, message in problems]}


def _parse_time(value: str, column: str) -> datetime | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MoneyError(f"{column} {text!r} is not a date (2026-10-01) or an ISO 8601 time with zone") from None
    if parsed.tzinfo is None:
        raise MoneyError(f"{column} {text!r} needs a time zone, e.g. a trailing Z for UTC")
    return parsed


def parse_csv(text: str) -> tuple[list[tuple[int, PriceCardCreate]], list[tuple[str, str]]]:
    """(row number, card) for each good row of CSV text, and (where, problem) for each bad one (row 1 is the header)."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if missing or unknown:
        what = f"missing column(s) {', '.join(missing)}" if missing else f"unknown column(s) {', '.join(unknown)}"
        return [], [("header", f"{what}; expected {','.join(CSV_COLUMNS)} (effective_to optional)")]
    reader.fieldnames = header
    cards, problems = [], []
    for number, row in enumerate(reader, start=2):
        try:
            values = {k: (v or "").strip() for k, v in row.items() if k is not None}
            cards.append((number, PriceCardCreate(
                sku=values["sku"], unit=values["unit"] or None, currency=values["currency"],
                unit_price=parse_decimal(values["unit_price"], "unit_price"),
                effective_from=_parse_time(values["effective_from"], "effective_from"),
                effective_to=_parse_time(values.get("effective_to", ""), "effective_to"),
            )))
        except MoneyError as exc:
            problems.append((f"row {number}", str(exc)))
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"])
            problems.append((f"row {number}", f"{field + ': ' if field else ''}{clean_message(error['msg'])}"))
    if not cards and not problems:
        problems.append(("file", "no price cards in it"))
    return cards, problems


def import_cards(session: Session, principal: Principal, text: str) -> list[PriceCard]:
    """Check every row of a CSV, then store them all, or none (PriceCardImportError listing every bad row)."""
    principal.require_role(*WRITE_ROLES, action="change price cards")
    numbered, problems = parse_csv(text)
    accepted: list[PriceCardCreate] = []
    for number, data in numbered:
        clashes = _problems(session, data, accepted)
        problems += [(f"row {number}", message) for message in clashes]
        accepted.append(data)
    if problems:
        problems.sort(key=lambda p: (not p[0].startswith("row"), int(p[0][4:]) if p[0].startswith("row ") else 0))
        raise PriceCardImportError(problems)
    stored = [PriceCard(**data.model_dump(), created_by=principal.username) for data in accepted]
    session.add_all(stored)
    session.flush()
    audit.record(session, principal, "import", "price_card", len(stored), detail={"skus": sorted({c.sku for c in stored})})
    return stored
