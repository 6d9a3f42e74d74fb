"""Numbers written in decimal by someone else: a header, a node, a command line.

`str.isdigit()` alone is not the check to make before `int()`: it accepts
digits such as '²' (a latin-1 byte in an HTTP header) that `int()` refuses,
and `int()` refuses more than 4300 digits. Either was a 500 or a traceback
wherever a caller chose the text. Read such numbers with `decimal`.
"""

from __future__ import annotations


def decimal(text: str, max_digits: int) -> int | None:
    """`text` as a non-negative integer when it is 1 to `max_digits` ASCII
    digits (leading zeros count), else None."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
