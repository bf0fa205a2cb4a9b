"""Pulling answers out of model text: the ``<answer>`` span, an option letter, a number.

All functions are pure string -> value maps with no model or tokenizer involved, and return ``None``
when the text does not name exactly one answer (callers decide what ``None`` is worth).
"""

from __future__ import annotations

import re

_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def extract_answer(response: str) -> str | None:
    """Text inside the last ``<answer>...</answer>`` pair, stripped; None unless both tags are present.

    "Last" means the last closing tag and the nearest opening tag before it, so a stray or nested
    ``<answer>`` earlier in the text never leaks into the result.

    >>> extract_answer("<think>A or B?</think><answer> B </answer>")
    'B'
    >>> extract_answer("<answer>A</answer> no, <answer>C</answer>")
    'C'
    >>> extract_answer("<answer>B") is None
    True
    """
    return _last_span(response, _ANSWER_OPEN, _ANSWER_CLOSE)


def extract_think(response: str) -> str | None:
    """Text inside the last ``<think>...</think>`` pair, stripped; None unless both tags are present."""
    return _last_span(response, _THINK_OPEN, _THINK_CLOSE)


def answer_text(response: str) -> str:
    """The part of a response that states the answer, with Video-R1's fallback.

    The ``<answer>`` span when there is one; otherwise the text after the last ``</think>`` (so the
    reasoning never counts as an answer); otherwise the whole response, stripped.
    """
    inner = extract_answer(response)
    if inner is not None:
        return inner
    end = response.rfind(_THINK_CLOSE)
    return response[end + len(_THINK_CLOSE):].strip() if end >= 0 else response.strip()


def strip_answer_tags(solution: str) -> str:
    """A ground truth without its ``<answer>`` tags (datasets store both forms)."""
    inner = extract_answer(solution)
    return (inner if inner is not None else solution).strip()


def _last_span(text: str, open_tag: str, close_tag: str) -> str | None:
    end = text.rfind(close_tag)
    if end < 0:
        return None
    start = text.rfind(open_tag, 0, end)
    if start < 0:
        return None
    return text[start + len(open_tag):end].strip()


# --- option letters ------------------------------------------------------------------------------
# A token counts as an option letter when it is one of:
#   1. a letter of either case alone between delimiters: (B) [B] {B} $B$ \boxed{B} \text{B};
#   2. a standalone UPPERCASE letter (not part of a word, an abbreviation like "U.S." or a contraction
#      like "I'm"), except "A"/"I" directly followed by a lowercase word, which read as the article and
#      the pronoun ("A red ball", "I think"); words that only follow an option ("A or B", "A is
#      correct", "I because ...") do not make it an article;
#   3. a letter of either case after a cue word, "answer is b", "Answer: C", "option d"; a lowercase one
#      only when nothing word-like follows ("the answer is a red ball" names no option);
#   4. a letter of either case opening a line and followed by '.', ')' or ':' ("b) left", "c. up");
#   5. the whole text being one letter with optional punctuation ("b", "(c).").
_WRAPPED = re.compile(r"(?:[(\[{]|\$|\\boxed\{|\\text\{)\s*([A-Za-z])\s*(?:[)\]}]|\$)")
_STANDALONE_UPPER = re.compile(r"(?<![A-Za-z0-9'’.\-])([A-Z])(?![A-Za-z0-9'’\-]|\.[A-Za-z0-9])")
_OPTION_FOLLOWERS = (
    "or|and|nor|but|is|was|vs|versus|because|since|seems|appears|looks|matches|fits|describes|best"
)
_ARTICLE_OR_PRONOUN = re.compile(rf"[AI]\s+(?!(?:{_OPTION_FOLLOWERS})\b)[a-z]")
_CUE = re.compile(
    r"\b(?:answer|option|choice)\b(?:\s+is)?\s*[:=]?\s*[(\[{$*\"']*\s*([A-Za-z])(?![A-Za-z0-9'’\-])",
    re.IGNORECASE,
)
_LOWER_CUE_END = re.compile(r"\s*(?:$|[.,;:!?)\]}$*\"'\n])")
_LINE_START = re.compile(r"^\s*([A-Za-z])[.):](?=\s|$)", re.MULTILINE)
_WHOLE = re.compile(r"^\W*([A-Za-z])\W*$")


def option_letters(text: str) -> set[str]:
    """Every option letter the text names, uppercased (see the rules above `_WRAPPED`)."""
    found = {m.group(1) for m in _WRAPPED.finditer(text)}
    found |= {m.group(1) for m in _LINE_START.finditer(text)}
    found |= {m.group(1) for m in _WHOLE.finditer(text)}
    for m in _STANDALONE_UPPER.finditer(text):
        if not _ARTICLE_OR_PRONOUN.match(text, m.start()):
            found.add(m.group(1))
    for m in _CUE.finditer(text):
        letter = m.group(1)
        if letter.isupper() or _LOWER_CUE_END.match(text, m.end()):
            found.add(letter)
    return {letter.upper() for letter in found}


def extract_choice(text: str) -> str | None:
    """The one option letter (A-Z, uppercased) that `text` names; None for zero or several letters.

    Naming the same letter twice is fine ("B. right, so B"); naming two different ones is not.
    Ordinary words never count: lowercase letters need a marker (parentheses, a cue word, a line
    start with '.' or ')', or standing alone), and "A"/"I" before a lowercase word are the article
    and the pronoun.

    >>> [extract_choice(t) for t in ["(B)", "B.", "B) text", "$B$", "The answer is B", "b"]]
    ['B', 'B', 'B', 'B', 'B', 'B']
    >>> extract_choice("Answer: (C) the blue one")
    'C'
    >>> extract_choice("I think the answer is A because it moves left")
    'A'
    >>> extract_choice("a red ball moves") is None
    True
    >>> extract_choice("A or B") is None
    True
    """
    letters = option_letters(text)
    return letters.pop() if len(letters) == 1 else None


# --- numbers -------------------------------------------------------------------------------------
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})


def parse_number(text: str) -> float | None:
    """The first number written in `text`, as a float; None when there is none.

    Handles thousands separators ("1,234" -> 1234.0, only with groups of exactly three digits),
    signs including the Unicode minus, decimals, exponents and trailing units ("12 cm" -> 12.0,
    "50%" -> 50.0). The FIRST number wins, so "12 cm^2" is 12.0 and "3-4" is 3.0.

    >>> [parse_number(t) for t in ["12 cm", "1,234.5", "-3", "3.0", "about .5 m"]]
    [12.0, 1234.5, -3.0, 3.0, 0.5]
    >>> parse_number("none") is None
    True
    """
    cleaned = _THOUSANDS_COMMA.sub("", text.translate(_MINUS_SIGNS))
    match = _NUMBER.search(cleaned)
    return float(match.group(0)) if match else None
