"""Assertions shared by several test files."""

from __future__ import annotations

import pytest

from imgcls.errors import ImgclsError


def one_line_error(call, *fragments: str) -> str:
    """Run call(), expect an ImgclsError on one line that contains every fragment; return its message."""
    with pytest.raises(ImgclsError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message
