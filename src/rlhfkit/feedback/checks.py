"""What may enter the feedback database: JSON request bodies, text, names and ids.

Text that cannot be written out again must be refused where it comes in. Python's ``json`` accepts
``"\\udc80"`` (a lone surrogate, which is not Unicode text) and PostgreSQL refuses NUL in text columns;
either one, once stored, breaks every later reply or export that contains it. So every string that comes in
(API bodies, imported lines, command-line names) goes through :func:`find_bad_text` first.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import deque
from typing import Any, Optional

MAX_ID = 2**31 - 1  # ids are 32-bit INTEGER columns on PostgreSQL; anything larger names no row
MAX_NAME = 200  # the width of the name columns
AUDIO_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".flac": "audio/flac"}  # clips a task can play
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
# Characters that show nothing on their own: a text made only of these (and spaces) is empty to a reader.
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Zs", "Zl", "Zp"}
_INVISIBLE_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}  # Hangul fillers, the blank Braille cell


class BadField(ValueError):
    """A value that may not be stored: the field at fault and a sentence for people (``field: problem``)."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


def printable(text: str) -> str:
    """``text`` safe to put in a message: lone surrogates and NULs become escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def text_problem(text: str) -> Optional[str]:
    """Why ``text`` cannot be stored as text, or None."""
    m = _BAD_CHAR.search(text)
    if m is None:
        return None
    code = ord(m.group())
    if code == 0:
        return f"contains a NUL character (at character {m.start()}); text may not contain NUL"
    return (f"not valid Unicode: a lone surrogate U+{code:04X} at character {m.start()} "
            "(send UTF-8 text; a surrogate is only valid as half of an escaped pair)")


def find_bad_text(value: Any, field: str = "") -> Optional[tuple[str, str]]:
    """(field, problem) of the first string in a JSON value (keys included) that cannot be stored, or None."""
    queue = deque([(field, value)])  # a queue, not recursion: a body may nest as deep as the parser allows
    while queue:
        path, v = queue.popleft()
        if isinstance(v, str):
            problem = text_problem(v)
            if problem:
                return path or "body", problem
        elif isinstance(v, dict):
            for k, x in v.items():
                name = f"{path}.{printable(k)}" if path else printable(k)
                problem = text_problem(k)
                if problem:
                    return name, f"the key is {problem}"
                queue.append((name, x))
        elif isinstance(v, list):
            queue.extend((f"{path or 'body'}[{i}]", x) for i, x in enumerate(v))
    return None


def check_text(value: Any, field: str = "") -> None:
    """Raise :class:`BadField` if any string in ``value`` cannot be stored."""
    bad = find_bad_text(value, field)
    if bad:
        raise BadField(*bad)


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: only spaces, line breaks and invisible characters (zero-width space, ...)."""
    return all(ch.isspace() or ch in _INVISIBLE_LETTERS or unicodedata.category(ch) in _INVISIBLE_CATEGORIES
               for ch in text)


def check_name(value: Any, field: str) -> str:
    """A project or annotator name, stripped: visible text of at most 200 characters, one line, no ``/``."""
    if not isinstance(value, str):
        raise BadField(field, f"expected a string, got {'nothing' if value is None else type(value).__name__}")
    check_text(value, field)
    name = value.strip()
    if is_blank(name):
        raise BadField(field, "empty (only spaces or invisible characters)")
    if len(name) > MAX_NAME:
        raise BadField(field, f"longer than {MAX_NAME} characters")
    if "/" in name or any(unicodedata.category(ch) == "Cc" for ch in name):
        # A name is part of API paths (/api/admin/annotators/{name}): a slash or a control character breaks them.
        raise BadField(field, "may not contain '/' or control characters")
    return name


def _no_constant(word: str):
    raise BadField("body", f"invalid JSON: {word} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """A request body as JSON (None when empty); every problem is a :class:`BadField` on "body" or the field."""
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadField("body", f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise BadField("body", f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise BadField("body", "invalid JSON: nested too deeply") from None
    except BadField:
        raise
    except ValueError:  # the only other one json raises: an integer with more digits than Python converts
        raise BadField("body", "invalid JSON: a number with too many digits") from None
    check_text(value)
    return value
