"""Semantic IDs: parse and format between dialects, validate against a catalog.

A SID is a tuple of integer codes, one per level. Its text form differs between projects:
``<a_12><b_3><c_77>``, ``<s_a_12><s_b_3><s_c_77>``, any number of levels, optionally wrapped in
``<|sid_begin|>...<|sid_end|>``. recot stores codes as integers and formats them only at the
edges, so a catalog built in one dialect can train a model that uses another.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from recot.errors import SidError

LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_TOKEN = re.compile(r"<([a-z0-9_]*?)([a-z])_(\d+)>")
_WRAPPED = re.compile(r"^(<\|[^<>|]+\|>)?((?:<[a-z0-9_]+>)+)(<\|[^<>|]+\|>)?$")
# One SID in any dialect (for text whose dialect is unknown, e.g. a model's completion); a dataset's own
# grammar is SidDialect.pattern. Both are valid in Python's re and in DuckDB's RE2.
ANY_SID_PATTERN = r"(?:<\|[^<>|]+\|>)?(?:<[a-z0-9_]*[a-z]_\d+>)+(?:<\|[^<>|]+\|>)?"
_ANY_SID = re.compile(ANY_SID_PATTERN)
# One level's code inside a SID token of any dialect (``<a_12>``, ``<s_b_3>``): the number before ``>``.
CODE_PATTERN = r"_(\d+)>"
SID_FORM = (
    "one token per level in order, e.g. <a_12><b_3><c_77> or <s_a_12><s_b_3><s_c_77>, "
    "optionally wrapped as <|sid_begin|>...<|sid_end|>"
)


@dataclass(frozen=True)
class SidDialect:
    """How SID codes are written as tokens.

    ``prefix`` goes before the level letter (``"s_"`` gives ``<s_a_12>``); ``begin``/``end`` wrap
    the whole SID when set.
    """

    prefix: str = ""
    begin: str | None = None
    end: str | None = None

    def __post_init__(self) -> None:
        if (self.begin is None) != (self.end is None):
            raise SidError("a dialect sets both begin and end markers or neither")

    def token(self, level: int, code: int) -> str:
        return f"<{self.prefix}{LEVEL_LETTERS[level]}_{code}>"

    def token_list(self, codes: Sequence[int]) -> list[str]:
        """The SID as MiniOneRec's token list (``sids.json``), begin/end markers included when the dialect has them."""
        body = [self.token(level, int(code)) for level, code in enumerate(codes)]
        return [self.begin, *body, self.end] if self.begin and self.end else body

    def format(self, codes: Sequence[int]) -> str:
        body = "".join(self.token(level, int(code)) for level, code in enumerate(codes))
        return f"{self.begin}{body}{self.end}" if self.begin else body

    def parse(self, text: str) -> tuple[int, ...]:
        """Codes of ``text``, which must be written in this dialect."""
        codes, dialect = parse_sid(text)
        if dialect != self:
            raise SidError(f"SID {text!r} is in dialect {dialect} but {self} was expected")
        return codes

    def pattern(self, levels: int | None = None, digits: int | None = None) -> str:
        """A regular expression matching one SID of this dialect (``levels`` codes, or any number), valid
        in Python's ``re`` and in DuckDB's RE2: rules, grounding and evaluation find SIDs with it. ``digits``: at most
        that many digits per code (a bounded grammar for structured outputs), else any number."""
        prefix = re.escape(self.prefix)
        number = f"\\d{{1,{digits}}}" if digits else "\\d+"
        if levels:
            body = "".join(f"<{prefix}{LEVEL_LETTERS[level]}_{number}>" for level in range(levels))
        else:
            body = f"(?:<{prefix}[a-z]_{number}>)+"
        return f"{re.escape(self.begin)}{body}{re.escape(self.end)}" if self.begin and self.end else body

    def tokens(self, codebook_sizes: Sequence[int]) -> list[str]:
        """Every token a model needs for SIDs of this shape, begin/end markers included."""
        out = [self.token(level, code) for level, size in enumerate(codebook_sizes) for code in range(size)]
        return out + [self.begin, self.end] if self.begin and self.end else out

    def format_column(self, codes: pl.Expr, levels: int) -> pl.Expr:
        """Vectorised :meth:`format` over a list-of-int column with ``levels`` codes per row."""
        parts: list[pl.Expr] = [pl.lit(self.begin)] if self.begin else []
        for level in range(levels):
            parts += [pl.lit(f"<{self.prefix}{LEVEL_LETTERS[level]}_"), codes.list.get(level).cast(pl.Utf8), pl.lit(">")]
        if self.end:
            parts.append(pl.lit(self.end))
        return pl.concat_str(parts)

    @classmethod
    def detect(cls, example: str) -> SidDialect:
        """The dialect an example SID is written in."""
        return parse_sid(example)[1]


DEFAULT_DIALECT = SidDialect()


def sid_codes(text: str | None) -> tuple[int, ...] | None:
    """Level codes of a SID text in any dialect (markers ignored); None when ``text`` is not one SID. Rewards compare
    SIDs by these codes, so a completion is judged by what it names, not by how it is written."""
    if not text or not _ANY_SID.fullmatch(text):
        return None
    return tuple(int(code) for code in re.findall(CODE_PATTERN, text))


def codes_sql(text: str) -> str:
    """SQL: the level codes of the SID text ``text`` (a SQL expression), as a list of strings (:func:`sid_codes`)."""
    return f"regexp_extract_all({text}, '{CODE_PATTERN}', 1)"


def parse_sid(text: str) -> tuple[tuple[int, ...], SidDialect]:
    """Codes and dialect of a SID in any dialect; :class:`SidError` names what is wrong."""
    match = _WRAPPED.match(text.strip())
    if match is None:
        raise SidError(f"malformed SID {text!r}: expected {SID_FORM}")
    begin, body, end = match.groups()
    if (begin is None) != (end is None):
        raise SidError(f"malformed SID {text!r}: a begin marker needs an end marker and vice versa")
    tokens = _TOKEN.findall(body)
    if "".join(f"<{p}{lvl}_{c}>" for p, lvl, c in tokens) != body:
        raise SidError(f"malformed SID {text!r}: expected {SID_FORM}")
    prefixes = {p for p, _, _ in tokens}
    if len(prefixes) != 1:
        raise SidError(f"malformed SID {text!r}: tokens mix prefixes {sorted(prefixes)}")
    letters = "".join(lvl for _, lvl, _ in tokens)
    if letters != LEVEL_LETTERS[: len(letters)]:
        raise SidError(f"malformed SID {text!r}: levels must run a, b, c, ... in order, got {', '.join(letters)}")
    return tuple(int(c) for _, _, c in tokens), SidDialect(prefixes.pop(), begin, end)


@dataclass(frozen=True)
class ParsedSids:
    """A column of SIDs parsed at once: codes and errors align with the input values."""

    codes: pl.Series  # list[int32]; null where the value was empty or malformed
    errors: pl.Series  # the SidError text where the value was malformed, else null
    dialects: Counter  # how many values were written in each dialect

    @property
    def dialect(self) -> SidDialect:
        """The most common dialect (the default one when nothing parsed)."""
        return self.dialects.most_common(1)[0][0] if self.dialects else DEFAULT_DIALECT


def parse_sid_values(values: Iterable[str | list[str] | None], empty_is_error: bool = False) -> ParsedSids:
    """Parse SIDs given as text or as token lists (MiniOneRec's sids.json).

    None or "" means "no SID" (a catalog item may lack one) unless ``empty_is_error``, for inputs
    where every value must be a SID.
    """
    codes: list[list[int] | None] = []
    errors: list[str | None] = []
    dialects: Counter = Counter()
    for value in values:
        parsed, error = None, None
        if isinstance(value, list):
            value = "".join(map(str, value))
        if value is not None and not isinstance(value, str):
            error = f"malformed SID {value!r}: expected text or a list of tokens"
        elif not value:
            error = f"malformed SID {value!r}: the SID is empty" if empty_is_error else None
        else:
            try:
                found, dialect = parse_sid(value)
                parsed = list(found)
                dialects[dialect] += 1
            except SidError as exc:
                error = str(exc)
        codes.append(parsed)
        errors.append(error)
    return ParsedSids(pl.Series(codes, dtype=pl.List(pl.Int32)), pl.Series(errors, dtype=pl.Utf8), dialects)
