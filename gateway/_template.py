"""google.api.http path templates, compiled to regular expressions.

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

Templates match the raw (still percent-encoded) request path, so an encoded `/` inside a
single-segment variable cannot split it; captured values are decoded afterwards. A trailing
slash is accepted on every template.

Where several templates match one path, the most specific wins, decided segment by segment
from the left: a literal beats a variable, a one-segment variable beats `**`. So
`/v1/object/query` always beats `/v1/object/{key}`, whatever order the protos declare them in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"[^/{}*]+")
_ENCODED_SLASH = re.compile("%2f", re.IGNORECASE)

# Kinds of path segment, by precedence at one position: lower wins.
LITERAL, SINGLE, DEEP = 0, 1, 2


class TemplateError(ValueError):
    """A path template that does not follow the google.api.http grammar."""


@dataclass(frozen=True)
class Variable:
    """One `{field.path=...}` of a template."""

    field_path: str
    """Dotted proto field path the captured value is bound to."""
    group: str
    """Name of its regex group (positional, so equal patterns share group names)."""
    multi_segment: bool
    """True when it may span several segments; an encoded `/` in it then stays encoded."""


@dataclass(frozen=True)
class PathTemplate:
    """A compiled template; `pattern` is its identity for routing."""

    template: str
    pattern: str
    variables: tuple[Variable, ...]
    verb: str
    literal_segments: int
    deep_wildcards: int
    segments: int
    segment_kinds: tuple[int, ...] = ()
    """LITERAL, SINGLE or DEEP per path segment, variables' own patterns expanded."""

    @property
    def regex(self) -> re.Pattern[str]:
        return _compile(self.pattern)

    @property
    def specificity(self) -> tuple[int, tuple[int, ...], str]:
        """Sort key, most specific first: templates with a verb, then segment by segment from
        the left a literal before a variable before `**`; the pattern breaks the remaining
        ties, so the order never depends on declaration order.

        Comparing position by position (not counting literals) is what makes a literal win
        where it matters: `/v1/shelves/{id}/x` beats `/v1/{name}/books/x` on `/v1/shelves/
        books/x` although both have three literals. Two templates with equal kinds but
        different literals never match the same path, and a prefix of another template's
        kinds only matches paths of its own length unless it ends in `**` (which sorts last).
        """
        return (0 if self.verb else 1, self.segment_kinds, self.pattern)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Decoded values by field path when `raw_path` matches, else None."""
        found = self.regex.fullmatch(raw_path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for variable in self.variables:
            raw = found.group(variable.group)
            if variable.multi_segment:
                # RFC 6570 reserved expansion: keep %2F so the value's segments stay apparent.
                values[variable.field_path] = "%2F".join(
                    unquote(part) for part in _ENCODED_SLASH.split(raw)
                )
            else:
                values[variable.field_path] = unquote(raw)
        return values


_COMPILED: dict[str, re.Pattern[str]] = {}


def _compile(pattern: str) -> re.Pattern[str]:
    compiled = _COMPILED.get(pattern)
    if compiled is None:
        compiled = _COMPILED[pattern] = re.compile(pattern)
    return compiled


def _split_top_level(text: str, separator: str, template: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "{":
            depth += 1
            if depth > 1:
                raise TemplateError(f"{template!r}: variables cannot nest")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"{template!r}: unbalanced '}}'")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise TemplateError(f"{template!r}: unbalanced '{{'")
    parts.append("".join(current))
    return parts


def _split_verb(template: str) -> tuple[str, str]:
    """Splits `/a/b:verb` into (`/a/b`, `verb`): the last ':' after the last top-level '/'."""
    depth, last_slash, colon = 0, -1, -1
    for index, char in enumerate(template):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and char == "/":
            last_slash, colon = index, -1
        elif depth == 0 and char == ":" and index > last_slash:
            colon = index
    if colon < 0:
        return template, ""
    verb = template[colon + 1 :]
    if not verb or not _LITERAL.fullmatch(verb):
        raise TemplateError(f"{template!r}: bad verb {verb!r}")
    return template[:colon], verb


class _Compiler:
    def __init__(self, template: str) -> None:
        self.template = template
        self.variables: list[Variable] = []
        self.literals = 0
        self.deep = 0
        self.segments = 0
        self.kinds: list[int] = []

    def segment(self, segment: str, *, last: bool) -> tuple[str, bool]:
        """Regex of one plain segment, and whether it spans several path segments."""
        if segment == "*":
            self.kinds.append(SINGLE)
            return "[^/]+", False
        if segment == "**":
            if not last:
                raise TemplateError(f"{self.template!r}: '**' must be the last segment")
            self.deep += 1
            self.kinds.append(DEEP)
            return ".+?", True
        if not segment or not _LITERAL.fullmatch(segment):
            raise TemplateError(f"{self.template!r}: bad segment {segment!r}")
        self.literals += 1
        self.kinds.append(LITERAL)
        return re.escape(segment), False

    def variable(self, segment: str, *, last: bool) -> str:
        name, has_pattern, inner = segment[1:-1].partition("=")
        if not _FIELD_PATH.fullmatch(name):
            raise TemplateError(f"{self.template!r}: bad field path {name!r}")
        if any(v.field_path == name for v in self.variables):
            raise TemplateError(f"{self.template!r}: {name!r} is bound twice")
        if has_pattern and not inner:
            raise TemplateError(f"{self.template!r}: empty pattern for {name!r}")
        parts = inner.split("/") if has_pattern else ["*"]
        regexes: list[str] = []
        multi = len(parts) > 1
        for index, part in enumerate(parts):
            regex, deep = self.segment(part, last=last and index == len(parts) - 1)
            regexes.append(regex)
            multi = multi or deep
        group = f"v{len(self.variables)}"
        self.variables.append(Variable(field_path=name, group=group, multi_segment=multi))
        return f"(?P<{group}>{'/'.join(regexes)})"


def parse_template(template: str) -> PathTemplate:
    """Compiles a google.api.http path template; raises TemplateError when malformed."""
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a template starts with '/'")
    path, verb = _split_verb(template)
    compiler = _Compiler(template)
    pieces: list[str] = []
    raw_segments = _split_top_level(path[1:], "/", template) if path != "/" else []
    for index, segment in enumerate(raw_segments):
        last = index == len(raw_segments) - 1
        compiler.segments += 1
        if segment.startswith("{") and segment.endswith("}"):
            pieces.append(compiler.variable(segment, last=last))
        elif "{" in segment or "}" in segment:
            raise TemplateError(f"{template!r}: a variable must be a whole segment")
        else:
            pieces.append(compiler.segment(segment, last=last)[0])
    body = "".join("/" + piece for piece in pieces)
    suffix = re.escape(":" + verb) if verb else ""
    pattern = f"{body}{suffix}/?" if body or suffix else "/"
    return PathTemplate(
        template=template,
        pattern=pattern,
        variables=tuple(compiler.variables),
        verb=verb,
        literal_segments=compiler.literals,
        deep_wildcards=compiler.deep,
        segments=compiler.segments,
        segment_kinds=tuple(compiler.kinds),
    )
