"""Turning a model's free-form final answer into a verdict against a gold answer.

Models answer in many shapes: ``<answer>\\boxed{\\frac{3}{4}}</answer>`` (the reference release's
format), ``Answer: 1,234``, ``\\boxed{\\frac{3}{4}}``, ``The answer is -7.``, ``$34.25``. Scoring
must be exact (0.75 and 3/4 are the same number), must never raise on any string (a malformed
answer is data, not a crash), and must run anywhere, inside threads and event loops. So plain
numbers are parsed and compared here with :class:`fractions.Fraction`; answers or golds that are
not plain numbers (a JSONL reasoning set whose gold is ``\\sqrt{2}``) go to math-verify, which
runs in a bounded worker (:mod:`.verifier`) because its own signal-based timeouts fail off the
main thread. This module knows nothing about task generators, so dataset loaders can reuse
:func:`score_answer` directly.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from timely_eval.tasks.math import verifier

# A number: thousands groups ("1,234") or plain digits, optional decimals and a small exponent.
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?:[eE][-+]?\d{1,3})?|[-+]?\.\d+"
_NUMBER_RE = re.compile(rf"(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?")
_ANSWER_RE = re.compile(r"\banswer\b\s*\**\s*[:\uff1a]", re.IGNORECASE)
_OPEN = r"<\s*answer\s*>"
_OPEN_TAG_RE = re.compile(_OPEN, re.IGNORECASE)
# A complete tag whose content holds no other opening tag ("<answer>1<answer>2</answer>" is 2).
_TAG_RE = re.compile(rf"{_OPEN}((?:(?!{_OPEN}).)*?)<\s*/\s*answer\s*>", re.IGNORECASE | re.DOTALL)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_TEXT_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
# Decorations that never change a number's value.
_STRIP = tuple(r"\$ $ \( \) \[ \] \left \right \! \; \: ** `".split())
_MAX_CHARS = 20_000  # answers longer than this are cut (from the end, where answers live)
_MAX_DIGITS = 400  # longer numerals are not answers; this also keeps int() far from its limits
_SYMPY_MAX_CHARS = 200


def extract_answer(text: str | None) -> str | None:
    """The part of a response that states the final answer, or None.

    Precedence: an ``<answer>...</answer>`` tag (see :func:`tagged_answer`), then the last
    ``Answer: ...`` line, then the last ``\\boxed{...}``, then the last number in the text. A
    stated answer is authoritative: a model that commits to ``<answer>I don't know</answer>`` or
    "Answer: I don't know" is not rescued by a number in its reasoning.

    Args:
        text: the model's final message.
    """
    stated = stated_answer(text)
    if stated is not None or not isinstance(text, str):
        return stated
    numbers = list(_NUMBER_RE.finditer(_normalise(text[-_MAX_CHARS:])))
    return numbers[-1].group(0) if numbers else None


def stated_answer(text: str | None) -> str | None:
    """The answer a response states explicitly (a tag, an ``Answer:`` line, a box), or None.

    Like :func:`extract_answer` without its last resort, the last number: what the format
    checks (``well_formed``) look for.

    Args:
        text: the model's final message.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    text = _normalise(text[-_MAX_CHARS:])
    tagged = _tag_content(text)
    if tagged is not None:
        inner = _inner_answer(tagged)
        return inner if inner is not None else tagged.strip()
    return _inner_answer(text)


def tagged_answer(text: str | None) -> str | None:
    """The content of the answer tag that counts, or None when the text has no tag.

    The rule: the **last complete** ``<answer>...</answer>`` counts (tags ignore case and
    spaces, ``< answer >``). Only when no tag is complete does an unclosed ``<answer>`` count,
    its content running to the end of the text (a reply cut off before ``</answer>``).

    Args:
        text: the model's final message.
    """
    if not isinstance(text, str):
        return None
    return _tag_content(_normalise(text[-_MAX_CHARS:]))


def parse_number(text: str | None) -> Fraction | None:
    """The exact value of the first number in an answer string, or None.

    Handles ``1,234``, ``$1,234.50``, ``-7.``, ``3/4``, ``\\frac{3}{4}``, ``0.75``, ``12 km``,
    ``x = 12`` (the part after the last ``=``) and small exponents (``1.5e3``).

    Args:
        text: an extracted answer (see :func:`extract_answer`).
    """
    parsed = _parse_with_places(text)
    return parsed[0] if parsed else None


def parse_with_places(text: str | None) -> tuple[Fraction, int | None] | None:
    """Like :func:`parse_number`, plus how many decimals the number was written with.

    The decimals let :func:`numbers_match` accept correctly rounded answers for golds such as
    2/3. Returns None when ``text`` holds no number.

    Args:
        text: an extracted answer.
    """
    return _parse_with_places(text)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox``) in ``text``, braces balanced.

    Args:
        text: e.g. a MATH-style worked solution.
    """
    return _last_boxed(_normalise(text))


def numbers_match(pred: Fraction, gold: Fraction, places: int | None = None) -> bool:
    """Exact equality, plus correctly rounded decimals for golds with no short decimal form.

    Args:
        pred: the parsed answer.
        gold: the exact gold value.
        places: decimals the answer was written with; an answer like ``0.667`` for gold 2/3 counts
            when it has at least 3 decimals and is within one unit of its last place.
    """
    if pred == gold:
        return True
    if places is None or places < 3:
        return False
    scale = 10**places
    if (gold * scale).denominator == 1:
        return False  # the gold is writable exactly with this many decimals, so demand exactness
    return abs(pred - gold) * scale < 1


def score_answer(
    answer: Any, gold: str | int | Fraction, *, timeout_s: float = verifier.DEFAULT_TIMEOUT_S
) -> float:
    """1.0 when ``answer`` states the gold value, else 0.0; never raises.

    Plain numbers on both sides are compared exactly here (see :func:`numbers_match`); anything
    else goes to math-verify, bounded by ``timeout_s`` (a comparison not done in time scores 0).

    Args:
        answer: the model's final message (None, empty or malformed scores 0).
        gold: the gold answer: an exact number, or a string (a number or a LaTeX expression).
        timeout_s: the most seconds a math-verify comparison may take.
    """
    if answer is None:
        return 0.0
    try:
        text = answer if isinstance(answer, str) else str(answer)
        gold_value = gold if isinstance(gold, Fraction) else parse_number(str(gold))
        candidate = extract_answer(text)
        if candidate is None:
            return 0.0
        parsed = _parse_with_places(candidate)
        if gold_value is not None and parsed is not None:
            return 1.0 if numbers_match(parsed[0], gold_value, parsed[1]) else 0.0
        if gold_value is not None and not any(ch.isdigit() for ch in candidate):
            return 0.0  # no digit can equal a plain number ("not sure", "banana")
        return 1.0 if _math_verify_equal(candidate, str(gold), timeout_s) else 0.0
    except (ValueError, ArithmeticError, RecursionError, MemoryError):  # pragma: no cover
        return 0.0


def format_number(value: Fraction | int) -> str:
    """The canonical text of an exact number: ``42``, ``-3.5``, ``34.25``, or ``2/3``."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    scaled = abs(value.numerator * 10**places // value.denominator)
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _normalise(text: str) -> str:
    return (
        text.replace("\u2212", "-")
        .replace("\u2013", "-")
        .replace("\u00a0", " ")
        .replace("\u202f", " ")
        .replace("\r\n", "\n")
    )


def _tag_content(text: str) -> str | None:
    """The content of the tag that counts in normalised ``text`` (see :func:`tagged_answer`)."""
    complete = list(_TAG_RE.finditer(text))
    if complete:
        return complete[-1].group(1)
    opened = list(_OPEN_TAG_RE.finditer(text))
    return text[opened[-1].end() :] if opened else None


def _inner_answer(text: str) -> str | None:
    """The last ``Answer:`` line (a box in it wins), else the last box; None when neither."""
    matches = list(_ANSWER_RE.finditer(text))
    if matches:
        rest = text[matches[-1].end() :].lstrip(" \t*")
        if rest.startswith("\n"):
            rest = rest.lstrip()
        line = rest.split("\n", 1)[0].strip()
        boxed = _last_boxed(line)
        return boxed if boxed is not None else line
    return _last_boxed(text)


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced (an unclosed one runs to the end)."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return text[start:].strip()


def _clean(text: str) -> str:
    text = _normalise(text).replace("{,}", ",").replace("\\,", "").replace("\\%", "%")
    text = _TEXT_RE.sub(r" \1 ", text)
    for token in _STRIP:
        text = text.replace(token, " ")
    text = _FRAC_RE.sub(r"(\1)/(\2)", text)
    text = _FRAC_SHORT_RE.sub(r"\1/\2", text)
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    # "-(3)/(4)" from "-\frac{3}{4}": drop the parentheses the \frac rewrite introduced.
    return re.sub(r"\(\s*([-+]?[\d.,]+)\s*\)", r"\1", text).strip()


def _parse_with_places(text: str | None) -> tuple[Fraction, int | None] | None:
    """(value, decimals written) of the first number in ``text``; None when there is none."""
    if not isinstance(text, str) or not text.strip():
        return None
    cleaned = _clean(text[:_MAX_CHARS])
    if "\\" in cleaned or "^" in cleaned:
        return None  # an expression (\sqrt{16}, 2^{10}), not a number: leave it to math-verify
    match = _NUMBER_RE.search(cleaned)
    if match is None:
        return None
    num = _to_fraction(match.group("num"))
    if num is None:
        return None
    den_text = match.group("den")
    if den_text is not None:
        den = _to_fraction(den_text)
        if den is None or den == 0:
            return None
        return num / den, None
    return num, _decimal_places(match.group("num"))


def _to_fraction(numeral: str) -> Fraction | None:
    numeral = numeral.replace(",", "")
    if len(numeral) > _MAX_DIGITS:
        return None
    try:
        return Fraction(numeral)
    except (ValueError, ZeroDivisionError):
        return None


def _decimal_places(numeral: str) -> int | None:
    if "e" in numeral.lower() or "." not in numeral:
        return None
    return len(numeral.split(".", 1)[1])


def _math_verify_equal(candidate: str, gold: str, timeout_s: float) -> bool:
    """Symbolic equality through math-verify, for answers that are not plain numbers.

    Input guards come first: sympy is never handed long input or big powers, which keeps the
    common junk fast and deterministic; the bounded worker (:mod:`.verifier`) catches the rest.
    """
    if not (_safe_for_sympy(candidate) and _safe_for_sympy(gold)):
        return False
    return verifier.equal(_as_latex(gold), _as_latex(candidate), timeout_s=timeout_s)


def _as_latex(text: str) -> str:
    """math-verify only finds LaTeX between delimiters (or in \\boxed)."""
    return text if "$" in text else f"${text}$"


def _safe_for_sympy(text: str) -> bool:
    if not text or len(text) > _SYMPY_MAX_CHARS or "!" in text:
        return False
    powers = text.count("^") + text.count("**")
    if powers > 1:
        return False
    if powers == 1 and any(len(d) > 3 for d in re.findall(r"\d+", text)):
        return False
    return all(len(d) <= 30 for d in re.findall(r"\d+", text))
