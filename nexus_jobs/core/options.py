"""Settings, each described once as an :class:`Option`: its kind, default, bounds, flag,
environment variable and help; and the conversion of a raw value (from the config file, a
flag or the environment) into a checked value, or a message saying what was expected.

Hostile values are bad input, never a crash: NaN, infinity, numbers past the bounds and
integers of hundreds of digits are refused with the expected range (docs/operating.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# A number option with no maximum of its own still gets one: minutes, seconds and counts past
# a billion are mistakes, and larger values overflow the clock arithmetic (docs/operating.md).
LARGEST_NUMBER = 1_000_000_000

_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    """One setting, described once.

    ``path`` is the dotted key inside its section of the config file (``nexus.endpoint`` at
    the top level, ``graceMinutes`` inside a job's ``config``). Secrets get no flag: they
    must not appear in process arguments.
    """

    path: str
    kind: type
    default: Any
    help: str
    flag: str | None = None
    env: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False

    @property
    def dest(self) -> str:
        name = self.flag or "--" + self.path.replace(".", "-")
        return name.lstrip("-").replace("-", "_")

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        words = {
            bool: "true or false",
            int: "a whole number",
            float: "a number",
            str: "a string",
            list: "a list of strings",
        }[self.kind]
        if self.kind in (int, float):
            top = _figure(self.maximum if self.maximum is not None else LARGEST_NUMBER)
            words += f" from {_figure(self.minimum)} to {top}" if self.minimum is not None else f" up to {top}"
        return words


def _figure(number: float) -> str:
    return f"{number:,.0f}" if float(number).is_integer() else f"{number:g}"


def coerce(option: Option, value: Any, *, from_text: bool) -> Any:
    """Return ``value`` converted to the option's kind, or raise ``ValueError`` saying what
    was expected. ``from_text`` values come from flags and the environment."""
    problem = ValueError(f"expected {option.expected()}, got {show(value)}")
    if option.kind is bool:
        if isinstance(value, bool):
            result: Any = value
        elif from_text and str(value).strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            result = str(value).strip().lower() in _TRUE_WORDS
        else:
            raise problem
    elif option.kind in (int, float):
        if isinstance(value, bool):
            raise problem
        if from_text:
            try:
                value = float(value) if option.kind is float else int(str(value).strip())
            except (ValueError, OverflowError):
                raise problem from None
        result = _number(option, value, problem)
    elif option.kind is list:
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise problem
        result = list(value)
    else:
        if not isinstance(value, str):
            raise problem
        result = value
    if option.choices and result not in option.choices:
        raise problem
    return result


def _number(option: Option, value: Any, problem: ValueError) -> int | float:
    """``value`` as the option's number kind, finite and in range, else ``problem``. Integers
    of any length and NaN or infinity (JSON's ``1e999`` is infinity) are bad input, not bugs."""
    if not isinstance(value, (int, float)):
        raise problem
    if isinstance(value, int) and abs(value) > LARGEST_NUMBER:
        raise problem  # before any float(): an int of 400 digits does not fit a float
    if not math.isfinite(value) or (option.kind is int and not float(value).is_integer()):
        raise problem
    result = option.kind(value)
    maximum = option.maximum if option.maximum is not None else LARGEST_NUMBER
    if (option.minimum is not None and result < option.minimum) or result > maximum:
        raise problem
    return result


def show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unknown_key(key: str, known: Sequence[str]) -> str:
    """The message for a key no option describes: a likely intended one, and the known ones."""
    import difflib  # imported here: only a config with a problem needs it

    guesses = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or [
        name for name in known if name.lower() == key.lower()
    ]
    hint = f"did you mean {guesses[0]!r}? " if guesses else ""
    return f"unknown key ({hint}known: {', '.join(known)})"
