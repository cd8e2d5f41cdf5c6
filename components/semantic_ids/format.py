"""Surface form of semantic IDs: one token per (level, code), e.g. ``<s_a_97><s_b_168><s_c_137><s_d_3>``.

The form follows GR2's SID tokens (levels a/b/c/d, paper.md section 1). Every such token is a
single token in the tokenizer the modeling stage builds.
"""

from __future__ import annotations

import re

LEVEL_NAMES = "abcdefgh"
SID_TOKEN_RE = re.compile(r"<s_([a-h])_(\d+)>")


def sid_token(level: int, code: int) -> str:
    return f"<s_{LEVEL_NAMES[level]}_{code}>"


def sid_string(codes: list[int] | tuple[int, ...]) -> str:
    """``[97, 168, 137, 3]`` -> ``<s_a_97><s_b_168><s_c_137><s_d_3>``."""
    return "".join(sid_token(level, int(code)) for level, code in enumerate(codes))


def parse_sid(text: str) -> tuple[int, ...] | None:
    """Codes of a SID string, or None if ``text`` is not exactly a run of level-ordered SID tokens."""
    matches = list(SID_TOKEN_RE.finditer(text))
    if not matches or "".join(m.group(0) for m in matches) != text:
        return None
    if [m.group(1) for m in matches] != list(LEVEL_NAMES[: len(matches)]):
        return None
    return tuple(int(m.group(2)) for m in matches)


def all_sid_tokens(levels: int, sizes: list[int]) -> list[str]:
    """Every token a tokenizer needs for SIDs with ``levels`` levels of the given codebook sizes."""
    return [sid_token(level, code) for level in range(levels) for code in range(sizes[level])]
