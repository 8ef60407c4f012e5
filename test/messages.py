"""Assertions on messages by what the user needs (the key, the value, the path), never their wording."""
from __future__ import annotations

import logging
from typing import Any


def mentions(text: str, *words: Any) -> bool:
    """Whether ``text`` names every one of ``words`` (case-insensitive; non-strings are formatted)."""
    lowered = text.lower()
    return all(str(word).lower() in lowered for word in words)


def warned(caplog: Any, *words: Any, level: int = logging.WARNING) -> bool:
    """Whether one log record at ``level`` or above names every one of ``words``."""
    return any(record.levelno >= level and mentions(record.getMessage(), *words) for record in caplog.records)
