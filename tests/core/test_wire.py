"""The wire conventions, on their own: what the C# client writes must read back exactly."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field, ValidationError

from pia_server.core import wire
from pia_server.core.wire import (
    MAX_TICKS,
    TimestampError,
    WireList,
    WireModel,
    WireTime,
    datetime_from_ticks,
    error_field_path,
    format_timestamp,
    parse_query_timestamp,
    parse_timestamp,
    ticks_from_datetime,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-27T12:34:56.1234567Z", "2026-03-27T12:34:56.1234567Z"),
        ("2026-03-27T12:34:56Z", "2026-03-27T12:34:56.0000000Z"),
        ("2026-03-27T12:34:56.5Z", "2026-03-27T12:34:56.5000000Z"),
        ("0001-01-01T00:00:00", "0001-01-01T00:00:00.0000000Z"),
        ("0001-01-01T00:00:00.0000000", "0001-01-01T00:00:00.0000000Z"),
        ("9999-12-31T23:59:59.9999999", "9999-12-31T23:59:59.9999999Z"),
        ("9999-12-31T23:59:59.9999999Z", "9999-12-31T23:59:59.9999999Z"),
        # No suffix means UTC (DateTimeKind.Unspecified as the early client writes it).
        ("2026-03-27T12:34:56.1234567", "2026-03-27T12:34:56.1234567Z"),
        # Offsets are converted to UTC, 7 digits intact.
        ("2026-03-27T13:34:56.1234567+01:00", "2026-03-27T12:34:56.1234567Z"),
        ("2026-03-27T10:04:56.1234567-02:30", "2026-03-27T12:34:56.1234567Z"),
        ("2026-03-27T12:34:56.1234567+00:00", "2026-03-27T12:34:56.1234567Z"),
    ],
)
def test_client_timestamps_round_trip_with_seven_digits(text: str, expected: str) -> None:
    assert format_timestamp(parse_timestamp(text)) == expected


def test_seventh_digit_orders_timestamps() -> None:
    # Python's datetime would collapse these two; the client compares them.
    a = parse_timestamp("2026-03-27T12:34:56.1234567Z")
    b = parse_timestamp("2026-03-27T12:34:56.1234568Z")
    assert b - a == 1


def test_extremes() -> None:
    assert parse_timestamp("0001-01-01T00:00:00Z") == 0
    assert parse_timestamp("9999-12-31T23:59:59.9999999Z") == MAX_TICKS


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T25:00:00Z",
        "2026-01-01",
        "0001-01-01T00:00:00+01:00",  # before year 1 once converted
        "9999-12-31T23:59:59.9999999-01:00",  # after DateTime.MaxValue once converted
        "2026-01-01T00:00:00+15:00",
        "2026-01-01T00:00:00Zjunk",
    ],
)
def test_bad_timestamps_are_refused(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(text)


def test_query_plus_that_became_a_space_is_put_back() -> None:
    assert parse_query_timestamp("2026-03-27T13:34:56.1234567 01:00") == parse_timestamp(
        "2026-03-27T12:34:56.1234567Z"
    )
    assert parse_query_timestamp("0001-01-01T00:00:00.0000000") == 0


def test_timestamps_out_always_end_in_z_never_offset() -> None:
    text = format_timestamp(ticks_from_datetime(dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)))
    assert text == "2026-01-02T03:04:05.0000060Z"
    assert "+00:00" not in text


def test_datetime_conversions_round_trip() -> None:
    moment = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    assert datetime_from_ticks(ticks_from_datetime(moment)) == moment
    later = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert datetime_from_ticks(ticks_from_datetime(later)) == later


class Sample(WireModel):
    user_id: UUID
    updated_at: WireTime
    tags: WireList[str] = Field(default_factory=list)
    display_name: str | None = None


@pytest.mark.parametrize(
    "payload",
    [
        {"userId": "A1B2C3D4-0000-4000-8000-00000000000F", "updatedAt": "2026-03-27T12:34:56Z"},
        {"UserId": "a1b2c3d4-0000-4000-8000-00000000000f", "UpdatedAt": "2026-03-27T12:34:56Z"},
        {"user_id": "{a1b2c3d4-0000-4000-8000-00000000000f}", "updated_at": "2026-03-27T12:34:56Z"},
        {"userId": "a1b2c3d400004000800000000000000f", "updatedAt": "2026-03-27T12:34:56Z"},
    ],
)
def test_any_casing_binds_and_guids_go_out_lowercase(payload: dict[str, str]) -> None:
    model = Sample.model_validate_json(json.dumps(payload))
    out = json.loads(model.model_dump_json())
    assert out["userId"] == "a1b2c3d4-0000-4000-8000-00000000000f"
    assert out["updatedAt"] == "2026-03-27T12:34:56.0000000Z"
    assert set(out) == {"userId", "updatedAt", "tags", "displayName"}


def test_null_collection_reads_as_empty_and_is_never_written_as_null() -> None:
    model = Sample.model_validate_json(
        '{"userId": "a1b2c3d4-0000-4000-8000-00000000000f",'
        ' "updatedAt": "2026-03-27T12:34:56Z", "tags": null}'
    )
    assert model.tags == []
    assert json.loads(model.model_dump_json())["tags"] == []


def test_unknown_keys_are_ignored() -> None:
    model = Sample.model_validate_json(
        '{"userId": "a1b2c3d4-0000-4000-8000-00000000000f",'
        ' "updatedAt": "2026-03-27T12:34:56Z", "somethingNew": 1}'
    )
    assert model.display_name is None


def test_timestamp_must_be_a_string_on_the_wire() -> None:
    with pytest.raises(ValidationError):
        Sample.model_validate_json(
            '{"userId": "a1b2c3d4-0000-4000-8000-00000000000f", "updatedAt": 12345}'
        )


def test_error_paths_read_like_the_body() -> None:
    assert error_field_path(("templates", "upserted", 3, "updatedAt")) == (
        "templates.upserted[3].updatedAt"
    )
    assert error_field_path(()) == ""


class Flags(WireModel):
    is_e2ee_encrypted: bool = False
    e2ee_enabled: bool = False


def test_acronyms_keep_the_client_spelling() -> None:
    # The C# DTO writes IsE2EEEncrypted; a plain camel-casing would expect isE2EeEncrypted.
    for key in ("isE2EEEncrypted", "IsE2EEEncrypted", "is_e2ee_encrypted"):
        assert Flags.model_validate_json(f'{{"{key}": true}}').is_e2ee_encrypted
    out = json.loads(Flags(is_e2ee_encrypted=True, e2ee_enabled=True).model_dump_json())
    assert out == {"isE2EEEncrypted": True, "e2eeEnabled": True}


@given(st.integers(min_value=0, max_value=MAX_TICKS))
def test_the_clients_own_form_parses_exactly(ticks: int) -> None:
    text = format_timestamp(ticks)  # the "O" form with Z, as the client writes UTC
    assert parse_timestamp(text) == ticks
    assert parse_timestamp(text[:-1]) == ticks  # no suffix: UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-29T00:00:00.0000000Z",  # not a leap year
        "2026-01-01T24:00:00.0000000Z",
        "2026-01-01T00:60:00.0000000Z",
        "2026-01-01T00:00:60.0000000Z",
        "0000-01-01T00:00:00.0000000Z",
        "2026-01-01T00:00:00.00000\u0660\u0661Z",  # Arabic-Indic digits are not digits here
        "2026-01-01T00:00:00.0000000X",
    ],
)
def test_impossible_times_in_the_clients_form_are_refused(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(text)


def _parsed(parse: Any, text: str) -> int | None:
    try:
        return int(parse(text))
    except TimestampError:
        return None


def test_the_fast_path_agrees_with_the_general_parser() -> None:
    # Every one-character change of the client's form, with and without the Z.
    for ticks in (0, 639_000_000_000_000_000, MAX_TICKS):
        for base in (format_timestamp(ticks), format_timestamp(ticks)[:-1]):
            for position in range(len(base) + 1):
                for char in "0123456789-T:.Z +z\u0661x":
                    text = base[:position] + char + base[position + 1 :]
                    expected = _parsed(wire._parse_general, text)
                    assert _parsed(parse_timestamp, text) == expected, text
