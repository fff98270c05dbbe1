"""Kubernetes label selectors: parse the string syntax and match label maps.

A port of apimachinery's `k8s.io/apimachinery/pkg/labels` `Parse` (lexer, parser, key and
value validation, matching and canonical rendering). Users write selectors the way they
write them for kubectl, so anything kubectl accepts must mean the same here and anything it
refuses must be refused here too. Deliberate differences from the Go code:

* a NUL character is refused. Go's lexer treats NUL as end of input, so `"\\x00x=y"` would
  silently become the empty selector, which matches (and so excludes) every pod;
* errors name the problem and the position (a character index into the input) instead of
  Go's terser messages.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping

import attrs

from diskguard.policy.names import (
    DNS1123_SUBDOMAIN_MAX,
    DNS1123_SUBDOMAIN_RE,
    LABEL_VALUE_MAX,
    LABEL_VALUE_RE,
    QUALIFIED_NAME_MAX,
    QUALIFIED_NAME_RE,
)


class SelectorError(ValueError):
    """A label selector (or one of its requirements) is not valid."""


class Operator(enum.Enum):
    """apimachinery's `selection.Operator` values (the ones a label selector can use)."""

    EQUALS = "="
    DOUBLE_EQUALS = "=="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


_EXACT_OPERATORS = frozenset({Operator.EQUALS, Operator.DOUBLE_EQUALS, Operator.NOT_EQUALS})
_SET_OPERATORS = frozenset({Operator.IN, Operator.NOT_IN})
_UNARY_OPERATORS = frozenset({Operator.EXISTS, Operator.DOES_NOT_EXIST})
_NUMERIC_OPERATORS = frozenset({Operator.GREATER_THAN, Operator.LESS_THAN})

# --- key and value validation (apimachinery's pkg/util/validation) -------------------------

# The names and their patterns: diskguard/policy/names.py.

_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc')"
)
_DNS1123_SUBDOMAIN_MSG = (
    "must be a lowercase RFC 1123 subdomain: lower case alphanumeric characters, '-' or '.', "
    "starting and ending with an alphanumeric character (e.g. 'example.com')"
)
_LABEL_VALUE_MSG = (
    "must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'MyValue', 'my_value' or '12345')"
)


def qualified_name_errors(value: str) -> list[str]:
    """Why `value` is not a valid label key (apimachinery's `IsQualifiedName`); [] if it is."""
    parts = value.split("/")
    if len(parts) > 2:
        return [
            "a qualified name is a name with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName'); it has at most one '/'"
        ]
    errors: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if len(prefix) > DNS1123_SUBDOMAIN_MAX:
                errors.append(
                    f"prefix part must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
                )
            if not DNS1123_SUBDOMAIN_RE.fullmatch(prefix):
                errors.append(f"prefix part {_DNS1123_SUBDOMAIN_MSG}")
    if not name:
        errors.append("name part must be non-empty")
    else:
        if len(name) > QUALIFIED_NAME_MAX:
            errors.append(f"name part must be no more than {QUALIFIED_NAME_MAX} characters")
        if not QUALIFIED_NAME_RE.fullmatch(name):
            errors.append(f"name part {_QUALIFIED_NAME_MSG}")
    return errors


def label_value_errors(value: str) -> list[str]:
    """Why `value` is not a valid label value (apimachinery's `IsValidLabelValue`); [] if it is."""
    errors: list[str] = []
    if len(value) > LABEL_VALUE_MAX:
        errors.append(f"must be no more than {LABEL_VALUE_MAX} characters")
    if not LABEL_VALUE_RE.fullmatch(value):
        errors.append(_LABEL_VALUE_MSG)
    return errors


# Go's strconv.ParseInt(s, 10, 64): optional sign, ASCII digits only (Python's int() would
# also take underscores, surrounding spaces and non-ASCII digits).
_GO_INT_RE = re.compile(r"[+-]?[0-9]+")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _parse_go_int64(text: str) -> int | None:
    if not _GO_INT_RE.fullmatch(text):
        return None
    number = int(text)
    if not _INT64_MIN <= number <= _INT64_MAX:
        return None
    return number


_CLIP = 80


def _lit(text: str) -> str:
    """A piece of outside input for an error message: quoted, escaped, of bounded length."""
    return repr(text if len(text) <= _CLIP else text[:_CLIP] + "...")


# --- the value types ----------------------------------------------------------------------


def _value_set(values: Iterable[str]) -> tuple[str, ...]:
    # Go keeps parsed values in a string set and renders them sorted; doing the same here
    # makes equal requirements compare equal and str() canonical.
    if isinstance(values, str):
        # A bare string would silently become a set of its characters.
        raise TypeError(f"requirement values must be a collection of strings, not {values!r}")
    return tuple(sorted(set(values)))


@attrs.frozen
class Requirement:
    """One `key <op> values` term of a selector. Construction validates like `NewRequirement`."""

    key: str
    operator: Operator
    values: tuple[str, ...] = attrs.field(default=(), converter=_value_set)

    def __attrs_post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise SelectorError(f"invalid requirement {self._describe()}: " + "; ".join(problems))

    def _describe(self) -> str:
        shown = ", ".join(_lit(v) for v in self.values[:5])
        more = ", ..." if len(self.values) > 5 else ""
        return f"(key={_lit(self.key)}, operator={self.operator.value!r}, values=[{shown}{more}])"

    def _problems(self) -> list[str]:
        problems = [f"key {_lit(self.key)}: {e}" for e in qualified_name_errors(self.key)]
        op, values = self.operator, self.values
        if op in _SET_OPERATORS and not values:
            problems.append("for 'in', 'notin' operators, values set can't be empty")
        elif op in _EXACT_OPERATORS and len(values) != 1:
            problems.append("exact-match compatibility requires one single value")
        elif op in _UNARY_OPERATORS and values:
            problems.append("values set must be empty for exists and does not exist")
        elif op in _NUMERIC_OPERATORS:
            if len(values) != 1:
                problems.append("for 'gt', 'lt' operators, exactly one value is required")
            problems.extend(
                f"value {_lit(v)}: for 'gt', 'lt' operators, the value must be an integer"
                for v in values
                if _parse_go_int64(v) is None
            )
        for v in values:
            problems.extend(f"value {_lit(v)}: {e}" for e in label_value_errors(v))
        return problems

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        present = self.key in labels
        if op in (Operator.IN, Operator.EQUALS, Operator.DOUBLE_EQUALS):
            return present and labels[self.key] in self.values
        if op in (Operator.NOT_IN, Operator.NOT_EQUALS):
            # A missing key satisfies a negative requirement, as in Kubernetes.
            return not present or labels[self.key] not in self.values
        if op is Operator.EXISTS:
            return present
        if op is Operator.DOES_NOT_EXIST:
            return not present
        # gt / lt: the label must be present and hold an int64; construction guaranteed
        # exactly one integer value.
        if not present:
            return False
        have = _parse_go_int64(labels[self.key])
        if have is None:
            return False
        want = int(self.values[0])
        return have > want if op is Operator.GREATER_THAN else have < want

    def __str__(self) -> str:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key
        if op is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if op in _SET_OPERATORS:
            return f"{self.key} {op.value} ({','.join(self.values)})"
        symbol = {Operator.GREATER_THAN: ">", Operator.LESS_THAN: "<"}.get(op, op.value)
        return f"{self.key}{symbol}{self.values[0]}"


def _sorted_by_key(requirements: Iterable[Requirement]) -> tuple[Requirement, ...]:
    # Go sorts parsed requirements by key so the rendering is deterministic; a stable sort
    # keeps the relative order of same-key requirements so str() round-trips exactly.
    return tuple(sorted(requirements, key=lambda r: r.key))


@attrs.frozen
class Selector:
    """An AND of requirements. The empty selector matches every label set."""

    requirements: tuple[Requirement, ...] = attrs.field(default=(), converter=_sorted_by_key)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def is_empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


# --- lexer (apimachinery's Lexer) ---------------------------------------------------------


class _Tok(enum.Enum):
    END = enum.auto()
    CLOSE_PAREN = enum.auto()
    COMMA = enum.auto()
    NOT = enum.auto()
    DOUBLE_EQUALS = enum.auto()
    EQUALS = enum.auto()
    GREATER = enum.auto()
    IDENTIFIER = enum.auto()
    IN = enum.auto()
    LESS = enum.auto()
    NOT_EQUALS = enum.auto()
    NOT_IN = enum.auto()
    OPEN_PAREN = enum.auto()


_LITERAL_TOKENS = {
    ")": _Tok.CLOSE_PAREN,
    ",": _Tok.COMMA,
    "!": _Tok.NOT,
    "==": _Tok.DOUBLE_EQUALS,
    "=": _Tok.EQUALS,
    ">": _Tok.GREATER,
    "in": _Tok.IN,
    "<": _Tok.LESS,
    "!=": _Tok.NOT_EQUALS,
    "notin": _Tok.NOT_IN,
    "(": _Tok.OPEN_PAREN,
}
_WHITESPACE = frozenset(" \t\r\n")
_SPECIAL = frozenset("=!(),><")


@attrs.frozen
class _Token:
    kind: _Tok
    literal: str
    pos: int

    def describe(self) -> str:
        return "end of string" if self.kind is _Tok.END else _lit(self.literal)


def _lex(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i >= n:
            tokens.append(_Token(_Tok.END, "", n))
            return tokens
        start = i
        if text[i] in _SPECIAL:
            # Longest match; every prefix of a two-character operator is itself a token,
            # so Go's scanSpecialSymbol reduces to this.
            if text[i : i + 2] in ("==", "!="):
                i += 2
            else:
                i += 1
        else:
            while i < n and text[i] not in _SPECIAL and text[i] not in _WHITESPACE:
                i += 1
        literal = text[start:i]
        tokens.append(_Token(_LITERAL_TOKENS.get(literal, _Tok.IDENTIFIER), literal, start))


# --- parser (apimachinery's Parser) -------------------------------------------------------


_OPERATOR_TOKENS = {
    _Tok.IN: Operator.IN,
    _Tok.NOT_IN: Operator.NOT_IN,
    _Tok.EQUALS: Operator.EQUALS,
    _Tok.DOUBLE_EQUALS: Operator.DOUBLE_EQUALS,
    _Tok.NOT_EQUALS: Operator.NOT_EQUALS,
    _Tok.GREATER: Operator.GREATER_THAN,
    _Tok.LESS: Operator.LESS_THAN,
}
_OPERATOR_SYMBOLS = "=, ==, !=, in, notin, >, <"
_QUOTE_LIMIT = 200


def _quote(text: str) -> str:
    shown = text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT]
    # JSON quoting escapes control characters so the message stays on one line.
    return json.dumps(shown, ensure_ascii=False) + ("..." if shown is not text else "")


class _Parser:
    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens = _lex(text)
        self._position = 0

    def _fail(self, problem: str, pos: int) -> SelectorError:
        return SelectorError(f"{problem} at position {pos} in {_quote(self._text)}")

    # In a value position "in" and "notin" are plain identifiers ("x in (in)", "in=notin").
    def _lookahead(self, values: bool) -> _Token:
        tok = self._tokens[self._position]
        if values and tok.kind in (_Tok.IN, _Tok.NOT_IN):
            return attrs.evolve(tok, kind=_Tok.IDENTIFIER)
        return tok

    def _consume(self, values: bool) -> _Token:
        tok = self._lookahead(values)
        # END is the last token and is never consumed past.
        if self._position < len(self._tokens) - 1:
            self._position += 1
        return tok

    def parse(self) -> Selector:
        requirements: list[Requirement] = []
        while True:
            tok = self._lookahead(values=True)
            if tok.kind is _Tok.END:
                return Selector(tuple(requirements))
            if tok.kind not in (_Tok.IDENTIFIER, _Tok.NOT):
                raise self._fail(f"expected a key or '!key', found {tok.describe()}", tok.pos)
            requirements.append(self._requirement())
            after = self._consume(values=True)
            if after.kind is _Tok.END:
                return Selector(tuple(requirements))
            if after.kind is not _Tok.COMMA:
                raise self._fail(
                    f"expected ',' or end of string after a requirement, found {after.describe()}",
                    after.pos,
                )
            nxt = self._lookahead(values=True)
            if nxt.kind not in (_Tok.IDENTIFIER, _Tok.NOT):
                raise self._fail(
                    f"expected a key or '!key' after ',', found {nxt.describe()}", nxt.pos
                )

    def _requirement(self) -> Requirement:
        key_tok, operator = self._key_and_inferred_operator()
        if operator is None:
            operator, op_tok = self._operator(key_tok.literal)
            if operator in _SET_OPERATORS:
                values = self._value_list(op_tok)
            else:
                values = [self._exact_value(op_tok)]
            for value, pos in values:
                errors = label_value_errors(value)
                if errors:
                    raise self._fail(
                        f"invalid value {_lit(value)} for key {_lit(key_tok.literal)}: "
                        + "; ".join(errors),
                        pos,
                    )
            if operator in _NUMERIC_OPERATORS:
                value, pos = values[0]
                if _parse_go_int64(value) is None:
                    raise self._fail(
                        f"value {_lit(value)} for {_lit(op_tok.literal)} must be an integer", pos
                    )
            return Requirement(key_tok.literal, operator, (v for v, _ in values))
        return Requirement(key_tok.literal, operator)

    def _key_and_inferred_operator(self) -> tuple[_Token, Operator | None]:
        operator: Operator | None = None
        tok = self._consume(values=True)
        if tok.kind is _Tok.NOT:
            operator = Operator.DOES_NOT_EXIST
            tok = self._consume(values=True)
            if tok.kind is not _Tok.IDENTIFIER:
                raise self._fail(f"expected a key after '!', found {tok.describe()}", tok.pos)
        elif tok.kind is not _Tok.IDENTIFIER:
            raise self._fail(f"expected a key, found {tok.describe()}", tok.pos)
        errors = qualified_name_errors(tok.literal)
        if errors:
            raise self._fail(f"invalid key {_lit(tok.literal)}: " + "; ".join(errors), tok.pos)
        # "!key" is complete by itself: Go does not look for an operator after it, so in
        # "!x=a" the '=' is then reported as unexpected by the caller.
        if operator is None and self._lookahead(values=True).kind in (_Tok.END, _Tok.COMMA):
            operator = Operator.EXISTS
        return tok, operator

    def _operator(self, key: str) -> tuple[Operator, _Token]:
        tok = self._consume(values=False)
        operator = _OPERATOR_TOKENS.get(tok.kind)
        if operator is None:
            raise self._fail(
                f"expected an operator ({_OPERATOR_SYMBOLS}) after key {_lit(key)}, "
                f"found {tok.describe()}",
                tok.pos,
            )
        return operator, tok

    def _value_list(self, op_tok: _Token) -> list[tuple[str, int]]:
        tok = self._consume(values=True)
        if tok.kind is not _Tok.OPEN_PAREN:
            raise self._fail(
                f"expected '(' after {_lit(op_tok.literal)}, found {tok.describe()}", tok.pos
            )
        first = self._lookahead(values=True)
        if first.kind is _Tok.CLOSE_PAREN:
            # "()" is the set holding only the empty value, as in Go.
            self._consume(values=True)
            return [("", first.pos)]
        if first.kind not in (_Tok.IDENTIFIER, _Tok.COMMA):
            raise self._fail(
                f"expected a value, ',' or ')' after '(', found {first.describe()}", first.pos
            )
        values: list[tuple[str, int]] = []
        # Mirrors Go's parseIdentifiersList: empty items (leading, doubled or trailing
        # commas) stand for the empty value.
        while True:
            tok = self._consume(values=True)
            if tok.kind is _Tok.IDENTIFIER:
                values.append((tok.literal, tok.pos))
                nxt = self._lookahead(values=True)
                if nxt.kind is _Tok.CLOSE_PAREN:
                    break
                if nxt.kind is not _Tok.COMMA:
                    raise self._fail(
                        f"expected ',' or ')' after value {_lit(tok.literal)}, "
                        f"found {nxt.describe()}",
                        nxt.pos,
                    )
            elif tok.kind is _Tok.COMMA:
                if not values:
                    values.append(("", tok.pos))
                nxt = self._lookahead(values=True)
                if nxt.kind is _Tok.CLOSE_PAREN:
                    values.append(("", nxt.pos))
                    break
                if nxt.kind is _Tok.COMMA:
                    self._consume(values=True)
                    values.append(("", nxt.pos))
            else:
                raise self._fail(
                    f"expected a value or ',' in the value list, found {tok.describe()}", tok.pos
                )
        self._consume(values=True)  # the ')' seen by the lookahead above
        return values

    def _exact_value(self, op_tok: _Token) -> tuple[str, int]:
        tok = self._lookahead(values=True)
        if tok.kind in (_Tok.END, _Tok.COMMA):
            return ("", tok.pos)  # "x=" compares with the empty value
        tok = self._consume(values=True)
        if tok.kind is not _Tok.IDENTIFIER:
            raise self._fail(
                f"expected a value after {_lit(op_tok.literal)}, found {tok.describe()}", tok.pos
            )
        return (tok.literal, tok.pos)


def parse_selector(text: str) -> Selector:
    """Parse a label selector as `kubectl -l` / apimachinery's `labels.Parse` does.

    Raises SelectorError, naming the problem and its position, for anything Kubernetes
    would refuse (and for a NUL character, see the module docstring).
    """
    nul = text.find("\x00")
    if nul >= 0:
        raise SelectorError(f"NUL character at position {nul} in {_quote(text)}")
    return _Parser(text).parse()
