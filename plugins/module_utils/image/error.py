# Copyright: llm-fleet contributors
# Apache-2.0
"""The error the image modules raise: a message fit for an operator, and details for the result."""

from __future__ import annotations

from typing import Any


class ImageError(Exception):
    """A failure with a message fit for an operator (names the offending value)."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
