"""What a request may ask: questions and searches, and the numbers and modes beside them."""

from __future__ import annotations

import re

from flask import request

from ..retrieve import MODES

MAX_QUESTION_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, CR and LF are fine


class BadQuestion(ValueError):
    """The question is empty, too long or not text."""


def check_question(value, noun: str = "question") -> str:
    """A usable question (or search), or BadQuestion with a message for the user."""
    if not isinstance(value, str) or not value.strip():
        raise BadQuestion(f"Please type a {noun}.")
    if len(value) > MAX_QUESTION_CHARS:
        raise BadQuestion(f"A {noun} is limited to {MAX_QUESTION_CHARS:,} characters "
                          f"(this one has {len(value):,}).")
    if _CONTROL.search(value):
        raise BadQuestion(f"The {noun} contains control characters.")
    return value.strip()


class BadParameter(ValueError):
    """A query-string parameter out of range; the message says what is allowed."""


def read_whole_number(name: str, default: int, low: int, high: int) -> int:
    """The query-string parameter `name` as a whole number from low to high, else BadParameter."""
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        raise BadParameter(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise BadParameter(f"{name} must be between {low} and {high}")
    return value


def read_mode() -> str:
    """The ?mode= of a search (hybrid when absent), else BadParameter."""
    mode = request.args.get("mode", "hybrid")
    if mode not in MODES:
        raise BadParameter(f"mode must be one of {', '.join(MODES)}")
    return mode


def check_axis(value) -> tuple[str, str]:
    """The two ideas of an axis written "A, B", each checked like a search, else BadQuestion."""
    sides = value.split(",") if isinstance(value, str) else []
    if len(sides) != 2 or not all(side.strip() for side in sides):
        raise BadQuestion("An axis is two ideas separated by one comma, such as "
                          "“concrete how-to, abstract essay”.")
    start, to = (check_question(side, noun="side of the axis") for side in sides)
    return start, to
