"""Request tags: short labels a client attaches so usage can be split per app.

A request may name tags in the `X-Herd-Tag` header (comma-separated; the
header may be repeated) and, on the OpenAI routes, in the body's
`metadata.tags` (a comma-separated string or a list of strings) and `user`
(stored as the tag `user:VALUE`). Each tag is 1-64 characters from
`A-Z a-z 0-9 . _ : @ / + -`, starting with a letter or digit; a request carries
at most MAX_TAGS distinct tags. Anything else is refused with a 400 naming the
header or field, so a trace row never holds text a client did not mean as a
label (and never any prompt text). Tags are stored in the trace row as one
comma-joined string, in the order given, duplicates removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from herd.errors import InvalidRequest

HEADER = "X-Herd-Tag"
#: The header's WSGI environ key (repeated headers arrive joined with ',').
WSGI_HEADER = "HTTP_X_HERD_TAG"
MAX_TAGS = 8
MAX_LENGTH = 64
#: A `user` value gets this prefix, so end users and app tags stay apart.
USER_PREFIX = "user:"

_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+\-]{0,63}")
_ALLOWED = (
    "1-64 characters from A-Z a-z 0-9 . _ : @ / + - (starting with a letter or digit)"
)


def _checked(values: Sequence[str], where: str, prefix: str = "") -> list[str]:
    if len(values) > MAX_TAGS:  # before any work: a long list costs nothing
        raise InvalidRequest(
            f"{where}: {len(values)} tags, at most {MAX_TAGS} per request"
        )
    tags = []
    for value in values:
        tag = value.strip()
        if not _TAG.fullmatch(tag):
            shown = tag if len(tag) <= MAX_LENGTH else tag[:MAX_LENGTH] + "..."
            raise InvalidRequest(
                f"{where}: tag {shown.encode('ascii', 'backslashreplace').decode()!r}"
                f" is not a valid tag ({_ALLOWED})"
            )
        tags.append(prefix + tag)
    return tags


#: Header values already checked (clients send the same few again and again).
_SEEN: dict[str, tuple[str, ...]] = {}
_SEEN_MAX = 1024
_SEEN_LENGTH = MAX_TAGS * (MAX_LENGTH + 2)


def from_header(value: str | None) -> tuple[str, ...]:
    """The tags of an `X-Herd-Tag` header value (repeats arrive joined with ',')."""
    if value is None:
        return ()
    found = _SEEN.get(value)
    if found is not None:
        return found
    found = (
        _limited(_checked(value.split(","), HEADER), HEADER) if value.strip() else ()
    )
    if len(value) <= _SEEN_LENGTH:  # padding with spaces cannot grow the cache
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[value] = found
    return found


def from_openai(body: dict[str, Any]) -> tuple[str, ...]:
    """The tags of an OpenAI body: `metadata.tags`, then `user`."""
    tags: list[str] = []
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object")
    raw = metadata.get("tags") if metadata else None
    if isinstance(raw, str):
        tags += _checked(raw.split(","), "metadata.tags")
    elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        tags += _checked(raw, "metadata.tags")
    elif raw is not None:
        raise InvalidRequest(
            "metadata.tags: must be a comma-separated string or a list of strings"
        )
    user = body.get("user")
    if isinstance(user, str):
        if len(user.strip()) > MAX_LENGTH - len(USER_PREFIX):
            raise InvalidRequest(
                f"user: at most {MAX_LENGTH - len(USER_PREFIX)} characters"
            )
        tags += _checked([user], "user", USER_PREFIX)
    elif user is not None:
        raise InvalidRequest("user: must be a string")
    return _limited(tags, "metadata.tags and user")


def merged(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    """Header tags then body tags, duplicates removed, still within MAX_TAGS."""
    if not second:
        return first
    return _limited([*first, *second], f"{HEADER}, metadata.tags and user together")


def _limited(tags: list[str], where: str) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise InvalidRequest(
            f"{where}: {len(unique)} tags, at most {MAX_TAGS} per request"
        )
    return unique


def joined(tags: tuple[str, ...]) -> str | None:
    """The trace column value: tags joined with ',' (None without tags)."""
    return ",".join(tags) if tags else None


def split(column: str | None) -> list[str]:
    """The tags of a trace column value."""
    return column.split(",") if column else []
