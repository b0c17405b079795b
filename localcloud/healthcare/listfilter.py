"""The `filter` of list methods: Google's list filter syntax (AIP-160), the subset the Healthcare API
documents: comparisons `field = value` (also `!=`, `<`, `<=`, `>`, `>=`, `:` for "has"),
`AND`, `OR`, `NOT` / `-`, parentheses, quoted or bare values. As in AIP-160, OR binds tighter
than AND (`a AND b OR c` is `a AND (b OR c)`).

Field paths are resolved on the resource's JSON, in either proto3 spelling
(`metadata.api_method_name` or `metadata.apiMethodName`); `:*` means "is set". A syntax error or a
field the resource does not have is a 400, as on Google.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .discovery import snake_case
from .errors import invalid_argument

_TOKEN = re.compile(
    r'\s*(?:(?P<op><=|>=|!=|=|<|>|:)|(?P<paren>[()])|(?P<quoted>"(?:[^"\\]|\\.)*")|(?P<word>[^\s()=<>!:"]+))'
)

Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class _Token:
    kind: str  # op, paren, quoted, word
    text: str


def compile_filter(expression: str, known_field: Callable[[list[str]], bool], contains_text: bool = False) -> Predicate:
    """A predicate over resource JSON; `known_field(path)` says whether a field path exists."""
    tokens = _tokenize(expression)
    parser = _Parser(tokens, known_field, contains_text)
    predicate = parser.conjunction()
    if parser.position != len(tokens):
        raise invalid_argument(f"Invalid filter {expression!r}: unexpected {tokens[parser.position].text!r}")
    return predicate


def _tokenize(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(expression):
        if expression[position:].isspace():
            break
        match = _TOKEN.match(expression, position)
        if match is None or match.end() == position:
            raise invalid_argument(f"Invalid filter {expression!r} at position {position}")
        kind = match.lastgroup or "word"
        tokens.append(_Token(kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token], known_field: Callable[[list[str]], bool], contains_text: bool) -> None:
        self.tokens = tokens
        self.position = 0
        self.known_field = known_field
        self.contains_text = contains_text

    def _peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> _Token:
        token = self._peek()
        if token is None:
            raise invalid_argument("Invalid filter: unexpected end")
        self.position += 1
        return token

    def conjunction(self) -> Predicate:
        parts = [self.disjunction()]
        while (token := self._peek()) is not None and not (token.kind == "paren" and token.text == ")"):
            if token.kind == "word" and token.text == "AND":
                self.position += 1
            parts.append(self.disjunction())  # juxtaposition is AND too
        return lambda resource: all(p(resource) for p in parts)

    def disjunction(self) -> Predicate:
        parts = [self.term()]
        while (token := self._peek()) is not None and token.kind == "word" and token.text == "OR":
            self.position += 1
            parts.append(self.term())
        return lambda resource: any(p(resource) for p in parts)

    def term(self) -> Predicate:
        token = self._take()
        if token.kind == "word" and token.text in ("NOT", "-"):
            inner = self.term()
            return lambda resource: not inner(resource)
        if token.kind == "word" and token.text.startswith("-") and len(token.text) > 1:
            self.tokens[self.position - 1] = _Token("word", token.text[1:])
            self.position -= 1
            inner = self.term()
            return lambda resource: not inner(resource)
        if token.kind == "paren" and token.text == "(":
            inner = self.conjunction()
            closing = self._take()
            if closing.text != ")":
                raise invalid_argument("Invalid filter: missing ')'")
            return inner
        if token.kind != "word":
            raise invalid_argument(f"Invalid filter: expected a field name, got {token.text!r}")
        op = self._take()
        if op.kind != "op":
            raise invalid_argument(f"Invalid filter: expected a comparison after {token.text!r}")
        value = self._take()
        if value.kind not in ("word", "quoted"):
            raise invalid_argument(f"Invalid filter: expected a value after {token.text}{op.text}")
        path = token.text.split(".")
        if not self.known_field(path):
            raise invalid_argument(f"Invalid filter: unknown field {token.text!r}")
        literal = value.text[1:-1].replace('\\"', '"') if value.kind == "quoted" else value.text
        return _comparison(path, op.text, literal, value.kind == "quoted", self.contains_text)


def _resolve(resource: Any, path: list[str]) -> Any:
    for name in path:
        if not isinstance(resource, dict):
            return None
        if name in resource:
            resource = resource[name]
            continue
        camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)
        resource = resource.get(camel) if camel in resource else resource.get(snake_case(name))
    return resource


def _comparison(path: list[str], op: str, literal: str, quoted: bool, contains_text: bool) -> Predicate:
    def check(resource: dict[str, Any]) -> bool:
        value = _resolve(resource, path)
        if op == ":":
            if literal == "*":
                return value not in (None, "", [], {})
            if isinstance(value, list | dict):
                return literal in value
            return value is not None and literal in str(value)
        if isinstance(value, bool) or (value is None and literal in ("true", "false") and not quoted):
            actual: Any = "true" if value else "false"
        elif value is None:
            return op == "!="
        else:
            actual = value
        number = _number(literal) if not quoted else None
        if number is not None and isinstance(actual, int | float | str) and _number(str(actual)) is not None:
            left, right = _number(str(actual)), number
            return bool(_compare(left, op, right))
        text = str(actual)
        if op == "=" and contains_text and not isinstance(value, bool):
            return literal in text
        return bool(_compare(text, op, literal))

    return check


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _compare(left: Any, op: str, right: Any) -> bool:
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]
