"""Wire conventions shared by every route: the one place that knows how the C# client talks.

- Timestamps travel as text with up to 7 fractional digits (.NET ticks of 100 ns). We keep them
  as integer ticks since 0001-01-01T00:00:00Z so that nothing is lost in a round trip and
  comparisons are plain integer comparisons; years 1 to 9999 fit in a signed 64-bit column.
- Keys come in as camelCase, PascalCase or snake_case and always go out as camelCase.
- Collections are never sent as ``null``; an incoming ``null`` collection reads as empty.
- GUIDs go out lowercase and hyphenated (pydantic's UUID already accepts the other forms).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Annotated, Any, TypeVar
from uuid import UUID

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
)

TICKS_PER_SECOND = 10_000_000
TICKS_PER_DAY = 86_400 * TICKS_PER_SECOND
# Ticks of 1970-01-01T00:00:00Z, as .NET counts them.
UNIX_EPOCH_TICKS = 621_355_968_000_000_000
# .NET DateTime.MaxValue: 9999-12-31T23:59:59.9999999.
MAX_TICKS = dt.date(9999, 12, 31).toordinal() * TICKS_PER_DAY - 1
MIN_TICKS = 0

_TIMESTAMP_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})"
    r"(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$",
    re.ASCII,  # \d is 0-9 only: int() would take other scripts' digits too
)


class TimestampError(ValueError):
    """A timestamp that is not one the C# client can write."""


def _parse_round_trip(text: str) -> int | None:
    """The client's own form, ``2026-12-03T19:47:47.0341786`` with ``Z`` or nothing, fast.

    A push carries two of these per record. The date and time go to the C parser (a fifth of
    the general path's cost); ``None`` leaves anything else, or invalid, to the general parser.
    """
    if not (
        text[4] == "-"
        and text[7] == "-"
        and text[10] == "T"
        and text[13] == ":"
        and text[16] == ":"
        and text[19] == "."
    ):
        return None
    fraction = text[20:27]
    if not (fraction.isdigit() and fraction.isascii()):
        return None
    try:
        value = dt.datetime.fromisoformat(text[:19])
    except ValueError:
        return None
    seconds = value.hour * 3600 + value.minute * 60 + value.second
    return (value.toordinal() - 1) * TICKS_PER_DAY + seconds * TICKS_PER_SECOND + int(fraction)


def parse_timestamp(text: str) -> int:
    """Parse a client timestamp into ticks (UTC). No suffix means UTC, an offset is converted."""
    if len(text) == 27 or (len(text) == 28 and text[27] == "Z"):
        ticks = _parse_round_trip(text)
        if ticks is not None:
            return ticks
    return _parse_general(text)


def _parse_general(text: str) -> int:
    match = _TIMESTAMP_RE.match(text.strip())
    if match is None:
        raise TimestampError(f"not an ISO-8601 timestamp: {text[:40]!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        date = dt.date(int(year), int(month), int(day))
    except ValueError as exc:
        raise TimestampError(f"invalid date in timestamp {text[:40]!r}") from exc
    h, m, s = int(hour), int(minute), int(second)
    if h > 23 or m > 59 or s > 59:
        raise TimestampError(f"invalid time of day in timestamp {text[:40]!r}")
    # Digits beyond the 7th are below .NET's resolution: dropped, as .NET would.
    frac_ticks = int((fraction or "").ljust(7, "0")[:7])
    ticks = (
        (date.toordinal() - 1) * TICKS_PER_DAY
        + (h * 3600 + m * 60 + s) * TICKS_PER_SECOND
        + frac_ticks
    )
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset_minutes = int(digits[:2]) * 60 + int(digits[2:])
        if offset_minutes > 14 * 60:
            raise TimestampError(f"offset out of range in timestamp {text[:40]!r}")
        ticks -= sign * offset_minutes * 60 * TICKS_PER_SECOND
    if not MIN_TICKS <= ticks <= MAX_TICKS:
        raise TimestampError(f"timestamp out of range: {text[:40]!r}")
    return ticks


def parse_query_timestamp(text: str) -> int:
    """Like :func:`parse_timestamp`, for query strings where an unescaped ``+`` became a space."""
    text = text.strip()
    if " " in text[10:]:
        # The date/time separator may legitimately be a space only at index 10.
        text = text[:11] + text[11:].replace(" ", "+")
    return parse_timestamp(text)


def format_timestamp(ticks: int) -> str:
    """Format ticks as UTC with all 7 fractional digits and a trailing ``Z``."""
    days, rem = divmod(ticks, TICKS_PER_DAY)
    date = dt.date.fromordinal(days + 1)
    seconds, frac = divmod(rem, TICKS_PER_SECOND)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return (
        f"{date.year:04d}-{date.month:02d}-{date.day:02d}"
        f"T{hours:02d}:{minutes:02d}:{seconds:02d}.{frac:07d}Z"
    )


def now_ticks() -> int:
    return time.time_ns() // 100 + UNIX_EPOCH_TICKS


def ticks_from_datetime(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    midnight = (value.date().toordinal() - 1) * TICKS_PER_DAY
    return (
        midnight
        + (value.hour * 3600 + value.minute * 60 + value.second) * TICKS_PER_SECOND
        + value.microsecond * 10
    )


def datetime_from_ticks(ticks: int) -> dt.datetime:
    days, rem = divmod(ticks, TICKS_PER_DAY)
    base = dt.datetime.combine(dt.date.fromordinal(days + 1), dt.time(), tzinfo=dt.UTC)
    return base + dt.timedelta(microseconds=rem // 10)


def _validate_wire_time(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        return parse_timestamp(value)
    if info.mode == "python" and isinstance(value, int) and not isinstance(value, bool):
        return value  # already ticks, from our own code
    if isinstance(value, dt.datetime) and info.mode == "python":
        return ticks_from_datetime(value)
    raise TimestampError("expected an ISO-8601 timestamp string")


WireTime = Annotated[
    int,
    BeforeValidator(_validate_wire_time),
    PlainSerializer(format_timestamp, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A timestamp kept as .NET ticks (UTC) and written as ``YYYY-MM-DDTHH:MM:SS.fffffffZ``."""


def _none_to_empty_list(value: Any) -> Any:
    return [] if value is None else value


T = TypeVar("T")
WireList = Annotated[list[T], BeforeValidator(_none_to_empty_list)]
"""A collection that reads ``null`` as empty (and, with a default, is never written as null)."""


def format_guid(value: UUID | str) -> str:
    return str(value if isinstance(value, UUID) else UUID(value))


# Name parts the C# DTOs spell in capitals (IsE2EEEncrypted), which a plain camel-casing
# would turn into "isE2EeEncrypted" and so never match the client's key.
_ACRONYMS = {"e2ee": "E2EE"}


def _word(part: str) -> str:
    return _ACRONYMS.get(part, part[:1].upper() + part[1:])


def to_camel(name: str) -> str:
    """``is_e2ee_encrypted`` -> ``isE2EEEncrypted``, ``updated_at`` -> ``updatedAt``."""
    first, *rest = name.split("_")
    return first + "".join(_word(p) for p in rest if p)


def to_pascal(name: str) -> str:
    return "".join(_word(p) for p in name.split("_") if p)


def _validation_alias(name: str) -> AliasChoices:
    camel = to_camel(name)
    choices: list[str] = [camel, to_pascal(name)]
    if name not in choices:
        choices.append(name)
    return AliasChoices(*choices)


class WireModel(BaseModel):
    """Base of every request and response body: any of three casings in, camelCase out."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(
            validation_alias=_validation_alias, serialization_alias=to_camel
        ),
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )


def _wire_name(part: str) -> str:
    # Name a field as the client's DTO does on the wire, whichever casing the request used.
    return to_camel(part) if "_" in part else part[:1].lower() + part[1:]


def error_field_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``templates.upserted[3].updatedAt``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{_wire_name(part)}"
        else:
            path = _wire_name(str(part))
    return path
