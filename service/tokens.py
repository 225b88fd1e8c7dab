"""Bearer tokens (SPEC section 6): what a valid token is, decided without I/O.

A token is one line of RFC 6750 ``b64token`` characters: letters, digits and
``-._~+/``, then optional ``=`` padding. Every error message here is fixed text: it
never contains the value, nor any character or position of it, because the value is
a secret and error messages end up in logs, history and alerts.
"""

from __future__ import annotations

import re

MAX_TOKEN_BYTES = 16384  # far beyond real tokens (JWTs are a few KiB), below header limits
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
RULE = "the token must be one line of RFC 6750 token characters (A-Z a-z 0-9 - . _ ~ + / then =)"


class TokenError(ValueError):
    """A token is invalid; the message is fixed text that never shows the value."""


def strip_line_end(text: str) -> str:
    """``text`` without one trailing line end (``\\n`` or ``\\r\\n``), as editors write files."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def check_token(text: str) -> str:
    """The token itself when ``text`` is one valid token, else :class:`TokenError`."""
    if text == "":
        raise TokenError("the token is empty")
    if len(text) > MAX_TOKEN_BYTES:
        raise TokenError(f"the token is longer than {MAX_TOKEN_BYTES} characters")
    if _B64TOKEN.fullmatch(text) is None:
        raise TokenError(RULE)
    return text


def parse_token(text: str) -> str:
    """A token given as text (an environment value): one trailing line end is allowed."""
    return check_token(strip_line_end(text))


def token_from_bytes(data: bytes) -> str:
    """A token from a file's bytes (at most MAX_TOKEN_BYTES + 2 of them are needed)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise TokenError(RULE) from None
    return parse_token(text)


def parse_token_setting(name: str, raw: str) -> str:
    """The configuration parser of ``RELOAD_TOKEN``: a bad value is a ConfigError."""
    from service.errors import ConfigError

    try:
        return parse_token(raw)
    except TokenError as exc:
        raise ConfigError(f"{name}: {exc} (the value is not shown)") from None
