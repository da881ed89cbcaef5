"""Which ``redirect_uri`` values a login may return to.

Loopback per RFC 8252 (``http://localhost``, ``http://127.0.0.1``, ``http://[::1]``, any port,
any path), plus exact matches from ``auth.redirect_uri_allowlist``. The check is on the raw text
with one strict pattern, not on a URL parser's opinion: parsers disagree about userinfo,
backslashes, numeric host forms and trailing dots, and every disagreement is an open redirect.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote

MAX_REDIRECT_URI_LENGTH = 2048

# Host is one of the three loopback spellings; port is 1-5 digits; then an optional path and
# query made only of URL-safe characters (no backslash, no '@', no whitespace, no fragment).
_LOOPBACK = re.compile(
    r"^http://(?:localhost|127\.0\.0\.1|\[::1\])(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<rest>/[A-Za-z0-9\-._~!$&'()*+,;=:/%]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:/?%]*)?)?$",
    re.IGNORECASE,
)


def is_allowed_redirect_uri(value: str | None, allowlist: Iterable[str] = ()) -> bool:
    if not value or len(value) > MAX_REDIRECT_URI_LENGTH:
        return False
    if value in set(allowlist):
        return True
    match = _LOOPBACK.match(value)
    if match is None:
        return False
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        return False
    rest = match.group("rest") or ""
    # "//" right after the authority would read as a new authority to some parsers.
    return not rest.startswith("//")


def with_query(redirect_uri: str, params: dict[str, str]) -> str:
    """Append ``params`` (percent-encoded; a space as %20, never '+') to the redirect URI."""
    base, _, existing = redirect_uri.partition("?")
    pairs = parse_qsl(existing, keep_blank_values=True) + list(params.items())
    # quote (not quote_plus): a '+' in a value must never read back as a space.
    return f"{base}?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
