"""How an entry is padded before it is searched for: MetaCLIP 1's rule and MetaCLIP 2's.

English-only (`specs/metaclip.md`): every entry is searched as `" " + e + " "`. Worldwide
(`specs/metaclip-worldwide.md`): the space on a side is left out when the entry's character
on that side is "tight" (a script written without spaces, or punctuation), so `狗` matches
inside `一只狗在跑`, `iPhone 手机` needs a space before `iPhone` only, and `(dog)` matches
inside `a(dog)b`. Captions are spaced the same way in both modes.
"""

from __future__ import annotations

import string
from typing import Literal

Padding = Literal["plain", "tight"]

# Code point ranges whose characters are tight, as the spec lists them.
TIGHT_RANGES = (
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0x3400, 0x4DBF),  # extension A
    (0x20000, 0x2A6DF),  # extension B
    (0x2A700, 0x2B73F),  # C
    (0x2B740, 0x2B81F),  # D
    (0x2B820, 0x2CEAF),  # E
    (0x2CEB0, 0x2EBEF),  # F
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0x2E80, 0x2EFF),  # radicals supplement
    (0x2F00, 0x2FDF),  # Kangxi radicals
    (0x2FF0, 0x2FFF),  # ideographic description characters
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Burmese
    (0x1780, 0x17FF),  # Khmer
    (0x0F00, 0x0FFF),  # Tibetan
)
# ASCII punctuation and the full-width marks of the spec.
TIGHT_MARKS = frozenset(string.punctuation + "，。、；：？！“”‘’（）【】《》〈〉「」『』～—")


def is_tight(char: str) -> bool:
    """True when no space is needed between `char` and its neighbour for an entry to match."""
    if char in TIGHT_MARKS:
        return True
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in TIGHT_RANGES)


def pad_entry(entry: str, padding: Padding) -> str:
    """The string searched for in a spaced caption. An empty entry has no tight side."""
    if padding == "plain" or not entry:
        return f" {entry} "
    left = "" if is_tight(entry[0]) else " "
    right = "" if is_tight(entry[-1]) else " "
    return f"{left}{entry}{right}"
