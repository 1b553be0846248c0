"""A small PromQL reader for the tests: is an expression plausible, and which metrics does it
name. Not a parser: enough to catch unbalanced brackets, unknown functions, bad durations and
metric names that no Kiln process exports."""

from __future__ import annotations

import re


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FUNCTIONS = _words(
    """abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min
    count_over_time day_of_month day_of_week day_of_year days_in_month delta deriv exp floor
    histogram_quantile histogram_count histogram_sum histogram_fraction holt_winters hour
    idelta increase irate label_join label_replace last_over_time ln log10 log2
    max_over_time min_over_time minute month predict_linear present_over_time
    quantile_over_time rate resets round scalar sgn sort sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time time timestamp vector year"""
)
AGGREGATIONS = _words(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile"
)
KEYWORDS = _words("by without on ignoring group_left group_right and or unless bool offset")
#: Series Prometheus makes itself, not any exporter.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[([^\[\]]*)\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_DURATION = re.compile(r"(?:\d+(?:ms|[smhdwy]))+|\$__rate_interval|\$__interval|\$__range")
_LABEL_MATCHER = re.compile(r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*""\s*')


def check(expr: str) -> list[str]:
    """What is wrong with `expr`, if anything: a list of problems, empty when plausible."""
    problems: list[str] = []
    text = _STRING.sub('""', expr)
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return [f"unbalanced {char!r}"]
    if stack:
        return [f"unclosed {stack[-1]!r}"]
    for block in _MATCHERS.findall(text):
        inner = block[1:-1].strip().rstrip(",")
        for matcher in filter(None, (m.strip() for m in inner.split(","))):
            if not _LABEL_MATCHER.fullmatch(matcher):
                problems.append(f"bad label matcher {matcher!r}")
    for window in _RANGE.findall(text):
        for part in window.split(":"):
            if part and not _DURATION.fullmatch(part.strip()):
                problems.append(f"bad duration [{window}]")
    for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", _GROUPING.sub(" ", text)):
        name = match.group(1)
        if name not in FUNCTIONS | AGGREGATIONS:
            problems.append(f"unknown function {name}")
    if not metric_names(expr):
        problems.append("names no metric")
    return problems


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name in KEYWORDS:
            continue
        names.add(name)
    return names


def exported(name: str, types: dict[str, str], samples: set[str]) -> bool:
    """Whether a scrape shows `name`: as a family (`# TYPE` line, present even before the
    first sample), a sample, or a histogram's _bucket / _count / _sum series."""
    if name in types or name in samples:
        return True
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
            return True
    return False
