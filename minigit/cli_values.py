"""Typer's checks of command-line values, without importing pydantic for the plain ones.

Typer 0.29 checks every option's and argument's value (defaults included, a flag
excepted) with a pydantic ``TypeAdapter``: importing pydantic and building the
adapters was about 90 ms of a `minigit push` that takes 300. The values minigit's
commands take are plain: text, flags, whole numbers and numbers within bounds,
lists of text. ``install`` gives Typer's parameters a check of their own for exactly those
values, written out below, that gives what pydantic gives; any other value
(another type, a number it cannot read plainly, one out of bounds, a path, a
choice) goes to Typer's own check, pydantic and all, so that what is refused is
refused with Typer's own message. ``tests/unit/shared/test_cli_values.py`` checks
that both agree.

With a Typer that is not built this way (another version), ``install`` does nothing.
"""

from __future__ import annotations

import math
import re
from typing import Any, get_args, get_origin

# What int() and float() read exactly as pydantic's lax mode does: ASCII digits, no
# spaces, no underscores, no "inf"/"nan" (anything else: pydantic decides).
WHOLE = re.compile(r"[+-]?[0-9]+\Z")
DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
# Digits beyond this: pydantic may read the number differently (or refuse it).
MAX_DIGITS = 15


def plain_value(annotation: Any, info: Any, value: Any) -> tuple[bool, Any]:
    """``(True, checked value)`` for a plain value Typer would accept, else
    ``(False, None)``: Typer's own check decides."""
    if annotation is str or annotation is bool:
        return (True, value) if type(value) is annotation else (False, None)
    if annotation is int or annotation is float:
        number = plain_number(annotation, value)
        if number is None:
            return False, None
        if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
            return False, None  # refused (or clamped) by Typer
        return True, number
    is_text_list = get_origin(annotation) is list and get_args(annotation) == (str,)
    if is_text_list and isinstance(value, list | tuple) and all(type(item) is str for item in value):
        return True, list(value)
    return False, None


def plain_number(annotation: type, value: Any) -> int | float | None:
    if type(value) is str:
        if len(value) > MAX_DIGITS:
            return None
        if annotation is int:
            return int(value) if WHOLE.match(value) else None
        number = float(value) if DECIMAL.match(value) else math.inf
        return number if math.isfinite(number) else None
    if type(value) is int:
        return value if annotation is int else float(value)
    if type(value) is float and annotation is float and math.isfinite(value):
        return value
    return None


def has_plain_check(info: Any, annotation: Any) -> bool:
    """Parameters whose values ``plain_value`` may check: no parser of their own,
    no clamping, and a type it knows."""
    if getattr(info, "parser", None) is not None or getattr(info, "clamp", False):
        return False
    return annotation in (str, bool, int, float) or (get_origin(annotation) is list and get_args(annotation) == (str,))


def install() -> bool:
    """Give Typer's parameters the plain checks (once); whether it could."""
    try:
        from typer import _coercion
        from typer.core import _TyperParameter
    except ImportError:
        return False
    original = _TyperParameter.get_runtime_param
    if getattr(original, "plain_checks", False):
        return True
    if not hasattr(_coercion, "RuntimeParam") or not hasattr(_coercion, "build_runtime_param"):
        return False

    class PlainRuntimeParam(_coercion.RuntimeParam):
        """A plain value checked here; any other by Typer's own check, built when first needed."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            plain, checked = plain_value(self.annotation, self.parameter_info, value)
            if plain:
                return checked
            return _coercion.build_runtime_param(param.type_descriptor)._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            descriptor = getattr(self, "type_descriptor", None)
            if (
                descriptor is not None
                and descriptor.file_annotation is None
                and has_plain_check(descriptor.parameter_info, descriptor.annotation)
            ):
                self._runtime_param = PlainRuntimeParam(
                    parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
                )
        return original(self)

    get_runtime_param.plain_checks = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param
    return True
