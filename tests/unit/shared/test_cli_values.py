"""minigit.cli_values: the plain checks give what Typer's own (pydantic) checks give."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer import _coercion
from typer.models import OptionInfo

from minigit import cli_values

KINDS = [
    (str, {}),
    (bool, {}),
    (int, {}),
    (int, {"min": 1, "max": 1000}),
    (int, {"min": 1}),
    (float, {}),
    (float, {"min": 0.1, "max": 3600.0}),
    (list[str], {}),
]

NUMBERISH = st.from_regex(r"\A[ +\-]?[0-9._eE+\-]{0,20}\Z", fullmatch=True)
VALUES = st.one_of(
    NUMBERISH,
    st.text(max_size=12),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.tuples(st.text(max_size=5), st.text(max_size=5)),
    st.lists(st.integers(), max_size=2),
)


def typer_s_own(annotation, info, value):
    """What Typer's pydantic check makes of ``value``: ("ok", value) or ("refused", None)."""
    descriptor = _coercion.resolve_type_descriptor(annotation, info)
    try:
        return "ok", _coercion.build_runtime_param(descriptor)._coerce_value(value, param=None, ctx=None)
    except Exception:  # noqa: BLE001 - any refusal
        return "refused", None


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), value=VALUES)
def test_a_plain_check_gives_what_typer_s_own_check_gives(kind, value) -> None:
    annotation, bounds = kind
    info = OptionInfo(default=None, **bounds)
    assert cli_values.has_plain_check(info, annotation)
    plain, checked = cli_values.plain_value(annotation, info, value)
    if plain:  # otherwise Typer's own check decides: nothing to compare
        outcome, expected = typer_s_own(annotation, info, value)
        assert outcome == "ok" and checked == expected and type(checked) is type(expected), (value, expected)


@pytest.mark.parametrize(
    "annotation, bounds, value, expected",
    [
        (float, {"min": 0.1, "max": 3600.0}, "30", 30.0),
        (float, {"min": 0.1, "max": 3600.0}, 30.0, 30.0),
        (int, {"min": 1, "max": 1000}, "5", 5),
        (str, {}, "alice", "alice"),
        (bool, {}, True, True),
        (list[str], {}, ("a=b",), ["a=b"]),
    ],
)
def test_the_values_minigit_s_commands_are_given_are_checked_plainly(annotation, bounds, value, expected) -> None:
    assert cli_values.plain_value(annotation, OptionInfo(default=None, **bounds), value) == (True, expected)


@pytest.mark.parametrize(
    "annotation, bounds, value",
    [
        (float, {"min": 0.1, "max": 3600.0}, "0"),  # out of bounds: Typer's message
        (float, {}, "1_0"),
        (float, {}, "nan"),
        (int, {}, " 5"),
        (int, {}, "1e3"),
        (int, {}, True),
        (str, {}, 5),
        (bool, {}, "yes"),
    ],
)
def test_anything_else_goes_to_typer_s_own_check(annotation, bounds, value) -> None:
    assert cli_values.plain_value(annotation, OptionInfo(default=None, **bounds), value) == (False, None)


def test_paths_choices_and_clamped_numbers_keep_typer_s_own_check() -> None:
    from enum import Enum
    from pathlib import Path

    assert not cli_values.has_plain_check(OptionInfo(default=None), Path)
    assert not cli_values.has_plain_check(OptionInfo(default=None), Enum("Choice", "a b"))
    assert not cli_values.has_plain_check(OptionInfo(default=None, min=1, max=3, clamp=True), int)
    assert not cli_values.has_plain_check(OptionInfo(default=None, parser=int), str)
