"""Label selector parsing and matching.

The tables are ported from apimachinery's pkg/labels/selector_test.go (Kubernetes
v1.26-era and later), so a selector means here exactly what it means to kubectl.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskguard.policy.labels import (
    Operator,
    Requirement,
    Selector,
    SelectorError,
    _lex,
    _Tok,
    label_value_errors,
    parse_selector,
    qualified_name_errors,
)

# --- TestSelectorParse -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["x=a,y=b,z=c", "", "x!=a,y=b", "x=", "x= ", "x=,z= ", "x= ,z= ", "!x", "x>1", "x>1,z<5"],
)
def test_good_strings_restring_without_spaces(text: str) -> None:
    assert str(parse_selector(text)) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["x=a||y=b", "x==a==b", "!x=a", "x<a"])
def test_bad_strings(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)


def test_deterministic_parse() -> None:
    assert str(parse_selector("x=a,a=x")) == str(parse_selector("a=x,x=a")) == "a=x,x=a"
    assert parse_selector("x=a,a=x") == parse_selector("a=x,x=a")


# --- TestEverything / TestSelectorMatches ------------------------------------------------


def test_everything() -> None:
    everything = Selector()
    assert everything.is_empty()
    assert everything.matches({"x": "y"})
    assert everything.matches({})
    assert parse_selector("") == everything
    assert parse_selector(" \t\r\n") == everything
    assert str(everything) == ""


LABELSET = {"foo": "bar", "baz": "blah"}

MATCH_TABLE = [
    ("", {"x": "y"}, True),
    ("x=y", {"x": "y"}, True),
    ("x=y,z=w", {"x": "y", "z": "w"}, True),
    ("x!=y,z!=w", {"x": "z", "z": "a"}, True),
    ("notin=in", {"notin": "in"}, True),  # in and notin as key and value of an exact match
    ("x", {"x": "z"}, True),
    ("!x", {"y": "z"}, True),
    ("x>1", {"x": "2"}, True),
    ("x<1", {"x": "0"}, True),
    ("x=z", {}, False),
    ("x=y", {"x": "z"}, False),
    ("x=y,z=w", {"x": "w", "z": "w"}, False),
    ("x!=y,z!=w", {"x": "z", "z": "w"}, False),
    ("x", {"y": "z"}, False),
    ("!x", {"x": "z"}, False),
    ("x>1", {"x": "0"}, False),
    ("x<1", {"x": "2"}, False),
    ("foo=bar", LABELSET, True),
    ("baz=blah", LABELSET, True),
    ("foo=bar,baz=blah", LABELSET, True),
    ("foo=blah", LABELSET, False),
    ("baz=bar", LABELSET, False),
    ("foo=bar,foobar=bar,baz=blah", LABELSET, False),
    # Beyond the Go table: the semantics the brief spells out.
    ("x!=y", {}, True),  # != matches when the key is absent
    ("x notin (a,b)", {}, True),  # so does notin
    ("x notin (a,b)", {"x": "a"}, False),
    ("x notin (a,b)", {"x": "c"}, True),
    ("x in (a,b)", {}, False),
    ("x in (a,b)", {"x": "b"}, True),
    ("x in (a,b)", {"x": "c"}, False),
    ("x==y", {"x": "y"}, True),
    ("x==y", {"x": "yy"}, False),
    ("x=", {"x": ""}, True),
    ("x=", {"x": "a"}, False),
    ("x=", {}, False),
    ("x!=", {}, True),
    ("x!=", {"x": ""}, False),
    ("x in ()", {"x": ""}, True),  # "()" is the set {""}
    ("x in ()", {}, False),
    ("x notin ()", {"x": ""}, False),
    ("x notin ()", {"x": "a"}, True),
    ("x", {"x": ""}, True),
    ("!x", {"x": ""}, False),
    ("x>1", {}, False),
    ("x<1", {}, False),
    ("x>1", {"x": "v2"}, False),  # non-integer label value never satisfies gt/lt
    ("x<5", {"x": "-3"}, True),  # label values are parsed like strconv.ParseInt
    ("x<5", {"x": "+3"}, True),
    ("x>5", {"x": "007"}, True),
    ("x<5", {"x": " 3"}, False),
    ("x<5", {"x": "3_0"}, False),
    ("x<5", {"x": "\u0663"}, False),  # ARABIC-INDIC DIGIT THREE: not a Go digit
    ("x>5", {"x": str(2**63)}, False),  # out of int64 range: ParseInt fails
    ("x>5", {"x": str(2**63 - 1)}, True),
    ("x<5", {"x": str(-(2**63))}, True),
    ("x<5", {"x": str(-(2**63) - 1)}, False),
    ("x>9223372036854775806", {"x": "9223372036854775807"}, True),
    ("x>1,x<3", {"x": "2"}, True),
    ("x>1,x<3", {"x": "3"}, False),
    ("x>2", {"x": "2"}, False),
    ("example.com/app=web", {"example.com/app": "web"}, True),
    ("example.com/app=web", {"app": "web"}, False),
    ("Key=Value", {"key": "value"}, False),  # case-sensitive
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCH_TABLE)
def test_selector_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


# --- TestLexer / TestLexerSequence --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", _Tok.END),
        (",", _Tok.COMMA),
        ("notin", _Tok.NOT_IN),
        ("in", _Tok.IN),
        ("=", _Tok.EQUALS),
        ("==", _Tok.DOUBLE_EQUALS),
        (">", _Tok.GREATER),
        ("<", _Tok.LESS),
        ("!", _Tok.NOT),  # the lexer returns the longest valid token
        ("!=", _Tok.NOT_EQUALS),
        ("(", _Tok.OPEN_PAREN),
        (")", _Tok.CLOSE_PAREN),
        ("~", _Tok.IDENTIFIER),  # non-special characters are part of an identifier
        ("||", _Tok.IDENTIFIER),
    ],
)
def test_lexer_single(text: str, kind: _Tok) -> None:
    first = _lex(text)[0]
    assert first.kind is kind
    assert first.literal == text


ID, IN, NOTIN, OP, CP, CM = (
    _Tok.IDENTIFIER,
    _Tok.IN,
    _Tok.NOT_IN,
    _Tok.OPEN_PAREN,
    _Tok.CLOSE_PAREN,
    _Tok.COMMA,
)


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("key in ( value )", [ID, IN, OP, ID, CP]),
        ("key notin ( value )", [ID, NOTIN, OP, ID, CP]),
        ("key in ( value1, value2 )", [ID, IN, OP, ID, CM, ID, CP]),
        ("key", [ID]),
        ("!key", [_Tok.NOT, ID]),
        ("()", [OP, CP]),
        ("", []),
        ("x in (),y", [ID, IN, OP, CP, CM, ID]),
        (
            "== != (), = notin",
            [_Tok.DOUBLE_EQUALS, _Tok.NOT_EQUALS, OP, CP, CM, _Tok.EQUALS, NOTIN],
        ),
        ("key>2", [ID, _Tok.GREATER, ID]),
        ("key<1", [ID, _Tok.LESS, ID]),
        # Beyond the Go table: maximal munch of two-character operators only.
        ("===", [_Tok.DOUBLE_EQUALS, _Tok.EQUALS]),
        ("!!=", [_Tok.NOT, _Tok.NOT_EQUALS]),
        ("=!", [_Tok.EQUALS, _Tok.NOT]),
        ("a\vb", [ID]),  # only space, tab, CR and LF separate tokens
    ],
)
def test_lexer_sequence(text: str, kinds: list[_Tok]) -> None:
    tokens = _lex(text)
    assert tokens[-1].kind is _Tok.END
    assert [t.kind for t in tokens[:-1]] == kinds


def test_lexer_positions() -> None:
    tokens = _lex("  ab in\t(c,d)")
    assert [(t.literal, t.pos) for t in tokens] == [
        ("ab", 2),
        ("in", 5),
        ("(", 8),
        ("c", 9),
        (",", 10),
        ("d", 11),
        (")", 12),
        ("", 13),
    ]


# --- TestRequirementConstructor ------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "op", "values", "ok"),
    [
        ("x1", Operator.IN, (), False),
        ("x2", Operator.NOT_IN, (), False),
        ("x3", Operator.IN, ("foo",), True),
        ("x4", Operator.NOT_IN, ("foo",), True),
        ("x5", Operator.EQUALS, ("foo", "bar"), False),
        ("x6", Operator.EXISTS, (), True),
        ("x7", Operator.DOES_NOT_EXIST, (), True),
        ("x8", Operator.EXISTS, ("foo",), False),
        ("x9", Operator.IN, ("bar",), True),
        ("x10", Operator.IN, ("bar",), True),
        ("x11", Operator.GREATER_THAN, ("1",), True),
        ("x12", Operator.LESS_THAN, ("6",), True),
        ("x13", Operator.GREATER_THAN, (), False),
        ("x14", Operator.GREATER_THAN, ("bar",), False),
        ("x15", Operator.LESS_THAN, ("bar",), False),
        ("a" * 254, Operator.EXISTS, (), False),  # breaks DNS rule that len(key) <= 253
        ("x16", Operator.EQUALS, ("a" * 254,), False),
        ("x17", Operator.EQUALS, ("a b",), False),
        # Older vectors of the same test.
        ("1foo", Operator.IN, ("bar",), True),
        ("1234", Operator.IN, ("bar",), True),
        # Beyond the Go table.
        ("x", Operator.DOES_NOT_EXIST, ("foo",), False),
        ("x", Operator.NOT_EQUALS, (), False),
        ("x", Operator.DOUBLE_EQUALS, ("",), True),
        ("x", Operator.IN, ("",), True),  # the empty value is a valid value
        ("x", Operator.GREATER_THAN, ("1", "2"), False),
        ("x", Operator.GREATER_THAN, ("9223372036854775808",), False),  # overflows int64
        ("x", Operator.GREATER_THAN, ("9223372036854775807",), True),
        ("x", Operator.GREATER_THAN, ("-1",), False),  # integer, but not a label value
        ("", Operator.EXISTS, (), False),
    ],
)
def test_requirement_constructor(key: str, op: Operator, values: tuple[str, ...], ok: bool) -> None:
    if ok:
        req = Requirement(key, op, values)
        assert req.key == key and req.operator is op
    else:
        with pytest.raises(SelectorError):
            Requirement(key, op, values)


def test_requirement_values_are_a_sorted_set() -> None:
    req = Requirement("x", Operator.IN, ["b", "a", "b", ""])
    assert req.values == ("", "a", "b")
    assert req == Requirement("x", Operator.IN, ("a", "", "b"))


def test_requirement_refuses_a_bare_string_as_values() -> None:
    with pytest.raises(TypeError):
        Requirement("x", Operator.IN, "abc")


# --- TestToString -------------------------------------------------------------------------


def _r(key: str, op: Operator, *values: str) -> Requirement:
    return Requirement(key, op, values)


@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        (
            [
                _r("x", Operator.IN, "abc", "def"),
                _r("y", Operator.NOT_IN, "jkl"),
                _r("z", Operator.EXISTS),
            ],
            "x in (abc,def),y notin (jkl),z",
        ),
        (
            [
                _r("x", Operator.NOT_IN, "abc", "def"),
                _r("y", Operator.NOT_EQUALS, "jkl"),
                _r("z", Operator.DOES_NOT_EXIST),
            ],
            "x notin (abc,def),y!=jkl,!z",
        ),
        (
            [
                _r("x", Operator.NOT_IN, "abc"),
                _r("y", Operator.IN, "jkl", "mno"),
                _r("z", Operator.NOT_IN, ""),
            ],
            "x notin (abc),y in (jkl,mno),z notin ()",
        ),
        (
            [
                _r("x", Operator.EQUALS, "abc"),
                _r("y", Operator.DOUBLE_EQUALS, "jkl"),
                _r("z", Operator.NOT_EQUALS, "a"),
                _r("z", Operator.EXISTS),
            ],
            "x=abc,y==jkl,z!=a,z",
        ),
        (
            [
                _r("x", Operator.GREATER_THAN, "2"),
                _r("y", Operator.LESS_THAN, "8"),
                _r("z", Operator.EXISTS),
            ],
            "x>2,y<8,z",
        ),
        # The selector orders requirements by key (stably) however they were given.
        ([_r("b", Operator.EXISTS), _r("a", Operator.EXISTS)], "a,b"),
        ([_r("a", Operator.NOT_EQUALS, "x"), _r("a", Operator.EXISTS)], "a!=x,a"),
    ],
)
def test_to_string(requirements: list[Requirement], expected: str) -> None:
    selector = Selector(tuple(requirements))
    assert str(selector) == expected
    assert parse_selector(expected) == selector


# --- TestRequirementSelectorMatching --------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "requirements", "expected"),
    [
        (
            {"x": "foo", "y": "baz"},
            [_r("x", Operator.IN, "foo"), _r("y", Operator.NOT_IN, "alpha")],
            True,
        ),
        (
            {"x": "foo", "y": "baz"},
            [_r("x", Operator.IN, "foo"), _r("y", Operator.IN, "alpha")],
            False,
        ),
        ({"y": ""}, [_r("x", Operator.NOT_IN, ""), _r("y", Operator.EXISTS)], True),
        ({"y": ""}, [_r("x", Operator.DOES_NOT_EXIST), _r("y", Operator.EXISTS)], True),
        ({"y": ""}, [_r("x", Operator.NOT_IN, ""), _r("y", Operator.DOES_NOT_EXIST)], False),
        ({"y": "baz"}, [_r("x", Operator.IN, "")], False),
        ({"z": "2"}, [_r("z", Operator.GREATER_THAN, "1")], True),
        ({"z": "v2"}, [_r("z", Operator.GREATER_THAN, "1")], False),
    ],
)
def test_requirement_selector_matching(
    labels: dict[str, str], requirements: list[Requirement], expected: bool
) -> None:
    assert Selector(tuple(requirements)).matches(labels) is expected


# --- TestSetSelectorParser ----------------------------------------------------------------

E, NE, DNE = Operator.EXISTS, Operator.NOT_EQUALS, Operator.DOES_NOT_EXIST

VALID_PARSES: list[tuple[str, list[Requirement]]] = [
    ("", []),
    ("\rx", [_r("x", E)]),
    (
        "this-is-a-dns.domain.com/key-with-dash",
        [_r("this-is-a-dns.domain.com/key-with-dash", E)],
    ),
    (
        "this-is-another-dns.domain.com/key-with-dash in (so,what)",
        [_r("this-is-another-dns.domain.com/key-with-dash", Operator.IN, "so", "what")],
    ),
    (
        "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
        [_r("0.1.2.domain/99", Operator.NOT_IN, "10.10.100.1", "tick.tack.clock")],
    ),
    ("foo  in\t (abc)", [_r("foo", Operator.IN, "abc")]),
    ("x notin\n (abc)", [_r("x", Operator.NOT_IN, "abc")]),
    ("x  notin\t\t\t(abc,def)", [_r("x", Operator.NOT_IN, "abc", "def")]),
    ("x in (abc,def)", [_r("x", Operator.IN, "abc", "def")]),
    ("x in (abc,)", [_r("x", Operator.IN, "abc", "")]),
    ("x in ()", [_r("x", Operator.IN, "")]),
    (
        "x notin (abc,,def),bar,z in (),w",
        [
            _r("bar", E),
            _r("w", E),
            _r("x", Operator.NOT_IN, "abc", "", "def"),
            _r("z", Operator.IN, ""),
        ],
    ),
    ("x,y in (a)", [_r("x", E), _r("y", Operator.IN, "a")]),
    ("x=a", [_r("x", Operator.EQUALS, "a")]),
    ("x>1", [_r("x", Operator.GREATER_THAN, "1")]),
    ("x<7", [_r("x", Operator.LESS_THAN, "7")]),
    ("x=a,y!=b", [_r("x", Operator.EQUALS, "a"), _r("y", NE, "b")]),
    (
        "x=a,y!=b,z in (h,i,j)",
        [_r("x", Operator.EQUALS, "a"), _r("y", NE, "b"), _r("z", Operator.IN, "h", "i", "j")],
    ),
    ("x notin ( )", [_r("x", Operator.NOT_IN, "")]),
    ("x notin (, a)", [_r("x", Operator.NOT_IN, "", "a")]),
    ("a ", [_r("a", E)]),
    ("a in (x,y,notin, z,in)", [_r("a", Operator.IN, "in", "notin", "x", "y", "z")]),
    # Beyond the Go table.
    ("x notin (,)", [_r("x", Operator.NOT_IN, "")]),
    ("x in (a,,,b)", [_r("x", Operator.IN, "a", "", "b")]),
    ("x in(a)", [_r("x", Operator.IN, "a")]),
    ("x notin(a)", [_r("x", Operator.NOT_IN, "a")]),
    ("in in (in)", [_r("in", Operator.IN, "in")]),
    ("notin notin (notin)", [_r("notin", Operator.NOT_IN, "notin")]),
    ("!in", [_r("in", DNE)]),
    ("x=in", [_r("x", Operator.EQUALS, "in")]),
    ("x==y", [_r("x", Operator.DOUBLE_EQUALS, "y")]),
    ("x!=", [_r("x", NE, "")]),
    ("x=,y", [_r("x", Operator.EQUALS, ""), _r("y", E)]),
    ("x>007", [_r("x", Operator.GREATER_THAN, "007")]),
    ("x=a,x=a", [_r("x", Operator.EQUALS, "a"), _r("x", Operator.EQUALS, "a")]),
    ("  !x  ,  y  ", [_r("x", DNE), _r("y", E)]),
    ("a" * 63, [_r("a" * 63, E)]),
    ("x=" + "v" * 63, [_r("x", Operator.EQUALS, "v" * 63)]),
    (
        ("p" * 63 + ".") * 3 + "p" * 61 + "/" + "n" * 63,  # 253-character prefix
        [_r(("p" * 63 + ".") * 3 + "p" * 61 + "/" + "n" * 63, E)],
    ),
    ("A_b.C-9", [_r("A_b.C-9", E)]),
]


@pytest.mark.parametrize(("text", "requirements"), VALID_PARSES)
def test_set_selector_parser_valid(text: str, requirements: list[Requirement]) -> None:
    selector = parse_selector(text)
    assert selector == Selector(tuple(requirements))
    assert parse_selector(str(selector)) == selector


INVALID_PARSES = [
    "x=a||y=b",
    "x,,y",
    ",x,y",
    "x nott in (y)",
    "a in (xyz),",
    "a in (xyz)b notin ()",
    "a in (xyz abc)",  # no comma
    "a notin(",  # badly formed
    "a (",  # cpar
    "(",  # opar
    # Older vectors of the same test.
    "x in (abc,def",
    # Beyond the Go table.
    "x in",
    "x in (",
    "x in (a",
    "x in a",
    "x notin ((a))",
    "x in (a)(",
    "x in (=)",
    "x in (a,=)",
    "x,",
    ",",
    "!",
    "!!x",
    "!x,",
    "!=x",
    "=x",
    "x=(",
    "x=a=b",
    "x y",
    "x>",  # gt needs an integer, not the empty value
    "x<",
    "x>a",
    "x>-1",  # an integer but not a label value
    "x>+1",
    "x>1.5",
    "x>9223372036854775808",
    "x in (a b)",
    "x=a b",
    "A/b",  # prefix must be lower case
    "a/b/c",
    "/b",
    "a/",
    "-a",
    "a-",
    "a" * 64,
    "x=" + "v" * 64,
    "x=-v",
    "x=v_",
    "p" * 254 + "/n",
    "x=\u00e9",
    "\u00e9",
    "x\x00",
    "\x00x=y",  # Go would read this as the empty selector
    "x=y\x00,z",
]


@pytest.mark.parametrize("text", INVALID_PARSES)
def test_set_selector_parser_invalid(text: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert isinstance(info.value, ValueError)
    assert "position" in str(info.value)


# --- error messages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments", "position"),
    [
        ("env in (a,b", ["expected ',' or ')'", "end of string"], 11),
        ("env in a", ["expected '('", "'a'"], 7),
        ("x nott in (y)", ["expected an operator", "'nott'"], 2),
        ("a in (xyz abc)", ["expected ',' or ')'", "'abc'"], 10),
        ("x,,y", ["after ','", "','"], 2),
        ("x=a y=b", ["expected ',' or end of string", "'y'"], 4),
        ("A/b", ["invalid key 'A/b'", "prefix part"], 0),
        ("x, Bad_", ["invalid key 'Bad_'", "name part"], 3),
        ("x in (ok,-bad)", ["invalid value '-bad' for key 'x'"], 9),
        ("x>a", ["'a'", "must be an integer"], 2),
        ("!", ["expected a key after '!'", "end of string"], 1),
        ("x=a\x00", ["NUL"], 3),
    ],
)
def test_error_messages_name_problem_and_position(
    text: str, fragments: list[str], position: int
) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert f"at position {position} in " in message


def test_error_message_quotes_input_on_one_line() -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector("x=a\ny=b z")
    message = str(info.value)
    assert "\n" not in message
    assert '"x=a\\ny=b z"' in message


def test_error_message_truncates_huge_input() -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector("x=" + "v" * 10_000)
    assert len(str(info.value)) < 1_000


# --- validation helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("a", True),
        ("A", True),
        ("1", True),
        ("a.b_c-d", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("example.com/a", True),
        ("a-b.c-d/E_f", True),
        ("0.1.2.domain/99", True),
        ("Example.com/a", False),
        ("example_com/a", False),
        ("-example.com/a", False),
        ("example.com./a", False),
        ("example..com/a", False),
        ("/a", False),
        ("a/", False),
        ("a/b/c", False),
        ("", False),
        ("a b", False),
        ("a\n", False),  # Python's `$` would accept this; Go's does not
        ("_a", False),
        ("a.", False),
    ],
)
def test_qualified_name_errors(key: str, valid: bool) -> None:
    assert (qualified_name_errors(key) == []) is valid


def test_qualified_name_prefix_length_limit() -> None:
    label = "p" * 63
    prefix_253 = ".".join([label, label, label, "p" * 61])
    assert len(prefix_253) == 253
    assert qualified_name_errors(prefix_253 + "/n") == []
    assert qualified_name_errors(prefix_253 + "p/n") != []


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("", True),
        ("a", True),
        ("A.b_c-9", True),
        ("v" * 63, True),
        ("v" * 64, False),
        ("-a", False),
        ("a-", False),
        ("a b", False),
        ("a/b", False),
        ("a\n", False),
        ("\u00e9", False),
    ],
)
def test_label_value_errors(value: str, valid: bool) -> None:
    assert (label_value_errors(value) == []) is valid


# --- property tests ----------------------------------------------------------------------

SELECTOR_ALPHABET = st.sampled_from(list("ab1=!(),<> \t\r\n-_./AZ\u00e9\x00\v"))


@given(st.text())
@settings(max_examples=500)
def test_arbitrary_text_only_raises_selector_error(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError:
        return
    assert parse_selector(str(selector)) == selector


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["in", "notin", "==", "!=", "x", "y", "1", "()", ",", " "]),
            st.text(SELECTOR_ALPHABET, max_size=3),
        ),
        max_size=12,
    ).map("".join)
)
@settings(max_examples=2000)
def test_selector_like_text_only_raises_selector_error(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError:
        return
    assert parse_selector(str(selector)) == selector


_NAME = st.from_regex(re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"), fullmatch=True)
_DNS_LABEL = st.from_regex(re.compile(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?"), fullmatch=True)
_PREFIX = st.lists(_DNS_LABEL, min_size=1, max_size=4).map(".".join)
KEYS = st.one_of(_NAME, st.tuples(_PREFIX, _NAME).map("/".join))
VALUES = st.one_of(st.just(""), _NAME)
INTEGERS = st.integers(min_value=0, max_value=2**63 - 1).map(str)


@st.composite
def requirements(draw: st.DrawFn, keys: st.SearchStrategy[str] = KEYS) -> Requirement:
    key = draw(keys)
    op = draw(st.sampled_from(list(Operator)))
    if op in (Operator.IN, Operator.NOT_IN):
        values: list[str] = draw(st.lists(VALUES, min_size=1, max_size=4))
    elif op in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
        values = []
    elif op in (Operator.GREATER_THAN, Operator.LESS_THAN):
        values = [draw(INTEGERS)]
    else:
        values = [draw(VALUES)]
    return Requirement(key, op, values)


SELECTORS = st.lists(requirements(), max_size=5).map(lambda rs: Selector(tuple(rs)))


@given(SELECTORS)
def test_str_round_trips(selector: Selector) -> None:
    text = str(selector)
    assert parse_selector(text) == selector
    assert str(parse_selector(text)) == text


@given(SELECTORS, st.data())
def test_whitespace_between_tokens_does_not_matter(selector: Selector, data: st.DataObject) -> None:
    # Re-render every token with random whitespace around it; the meaning must not change.
    text = str(selector)
    tokens = _lex(text)[:-1]
    pieces = []
    for tok in tokens:
        pieces.append(data.draw(st.text(st.sampled_from(" \t\r\n"), max_size=2)))
        pieces.append(tok.literal)
        # Adjacent identifiers/keywords need a separator to stay separate tokens.
        pieces.append(" ")
    assert parse_selector("".join(pieces)) == selector


def _oracle(req: Requirement, labels: dict[str, str]) -> bool:
    """The requirement semantics written out independently of the implementation."""
    has = req.key in labels
    value = labels.get(req.key)
    op = req.operator
    if op is Operator.EXISTS:
        return has
    if op is Operator.DOES_NOT_EXIST:
        return not has
    if op in (Operator.EQUALS, Operator.DOUBLE_EQUALS):
        return has and value == req.values[0]
    if op is Operator.NOT_EQUALS:
        return not has or value != req.values[0]
    if op is Operator.IN:
        return has and value in set(req.values)
    if op is Operator.NOT_IN:
        return not has or value not in set(req.values)
    if not has or value is None or re.fullmatch(r"[+-]?[0-9]+", value) is None:
        return False
    number = int(value)
    if not -(2**63) <= number < 2**63:
        return False
    bound = int(req.values[0])
    return number > bound if op is Operator.GREATER_THAN else number < bound


# A small vocabulary so generated labels actually collide with the requirements.
SMALL_KEYS = st.sampled_from(["a", "b", "example.com/c"])
SMALL_VALUES = st.sampled_from(["", "x", "y", "0", "1", "2", "10", "-3", "+4", "v1", str(2**63)])


@st.composite
def small_requirements(draw: st.DrawFn) -> Requirement:
    key = draw(SMALL_KEYS)
    op = draw(st.sampled_from(list(Operator)))
    if op in (Operator.IN, Operator.NOT_IN):
        return Requirement(
            key, op, draw(st.lists(st.sampled_from(["", "x", "y", "1"]), min_size=1))
        )
    if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
        return Requirement(key, op)
    if op in (Operator.GREATER_THAN, Operator.LESS_THAN):
        return Requirement(key, op, [draw(st.sampled_from(["0", "1", "2", "10"]))])
    return Requirement(key, op, [draw(st.sampled_from(["", "x", "y", "1"]))])


@given(
    st.lists(small_requirements(), max_size=4),
    st.dictionaries(SMALL_KEYS, SMALL_VALUES),
)
@settings(max_examples=1000)
def test_matching_follows_requirement_semantics(
    reqs: list[Requirement], labels: dict[str, str]
) -> None:
    selector = Selector(tuple(reqs))
    for req in reqs:
        assert req.matches(labels) is _oracle(req, labels)
    assert selector.matches(labels) is all(_oracle(r, labels) for r in reqs)
    # The rendered form means the same thing.
    assert parse_selector(str(selector)).matches(labels) is selector.matches(labels)
