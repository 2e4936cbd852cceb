"""Label selectors, Calico and Kubernetes, evaluated in three-valued logic (pure).

A replay often knows only part of an object's labels: a namespace's labels are known in
full only when an inventory of Namespace objects was given (otherwise only the
``kubernetes.io/metadata.name`` label Kubernetes sets), and a workload's pods may have
carried different labels over a range. So a selector answers True, False or None
(undecidable), with Kleene's rules for ``&&``, ``||`` and ``!``: ``a == 'x' && b == 'y'`` is
False as soon as one side is known to be False, whatever the other side.

Calico's grammar as far as we accept it: ``all()``, ``has(k)``, ``k == 'v'``, ``k != 'v'``,
``k in {'a', 'b'}``, ``k not in {…}``, ``k contains|starts with|ends with 'v'``, ``!``, ``&&``,
``||`` and parentheses. ``k != 'v'`` and ``k not in {…}`` are true when ``k`` is absent, as in
Calico. Anything else (``global()``, unknown functions) is a ``SelectorError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Truth = bool | None
_TOKEN = re.compile(r"""\s*(?:(?P<op>&&|\|\||==|!=|!|\(|\)|\{|\}|,)"""
                    r"""|(?P<str>'[^']*'|"[^"]*")|(?P<word>[A-Za-z0-9_./-]+))""")
_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")


class SelectorError(ValueError):
    """A selector this module cannot read: reported as unsupported, never guessed."""


@dataclass(frozen=True)
class Labels:
    """Labels of one object; ``complete`` False means absent keys may exist (unknown)."""

    values: Mapping[str, str]
    complete: bool = True

    def get(self, key: str) -> tuple[bool | None, str | None]:
        """(present, value): present is None when the key is not known either way."""
        if key in self.values:
            return True, self.values[key]
        return (False if self.complete else None), None


Predicate = Callable[[Labels], Truth]


def t_and(a: Truth, b: Truth) -> Truth:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def t_or(a: Truth, b: Truth) -> Truth:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def t_not(a: Truth) -> Truth:
    return None if a is None else not a


def t_all(values: Iterable[Truth]) -> Truth:
    """True/False when every value agrees, None when they differ or any is unknown; None for none."""
    seen = set(values)
    return seen.pop() if len(seen) == 1 else None


@dataclass(frozen=True)
class Selector:
    """A parsed selector; ``text`` is how it was written (for reports)."""

    text: str
    predicate: Predicate

    def __call__(self, labels: Labels) -> Truth:
        return self.predicate(labels)

    @property
    def selects_all(self) -> bool:
        return self.text.strip() in ("", "all()", "{}")


ALL = Selector("all()", lambda _labels: True)


def _compare(key: str, test: Callable[[str], bool], absent: bool) -> Predicate:
    def predicate(labels: Labels) -> Truth:
        present, value = labels.get(key)
        if present is None:
            return None
        return test(value) if present and value is not None else absent
    return predicate


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise SelectorError(f"selector {text!r}: cannot read from {text[pos:pos + 20]!r}")
            kind = m.lastgroup or ""
            value = m.group(kind)
            self.tokens.append((kind, value[1:-1] if kind == "str" else value))
            pos = m.end()
        self.i = 0

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        k, v = self.peek()
        if k != kind or (value is not None and v != value):
            raise SelectorError(f"selector {self.text!r}: expected {value or kind}, found {v or 'the end'}")
        self.i += 1
        return v

    def parse(self) -> Predicate:
        if not self.tokens:
            return ALL.predicate  # Calico: an empty selector selects everything
        pred = self.or_()
        if self.peek()[0] != "end":
            raise SelectorError(f"selector {self.text!r}: unexpected {self.peek()[1]!r}")
        return pred

    def or_(self) -> Predicate:
        pred = self.and_()
        while self.peek() == ("op", "||"):
            self.i += 1
            left, right = pred, self.and_()
            pred = lambda lb, a=left, b=right: t_or(a(lb), b(lb))  # noqa: E731
        return pred

    def and_(self) -> Predicate:
        pred = self.unary()
        while self.peek() == ("op", "&&"):
            self.i += 1
            left, right = pred, self.unary()
            pred = lambda lb, a=left, b=right: t_and(a(lb), b(lb))  # noqa: E731
        return pred

    def unary(self) -> Predicate:
        if self.peek() == ("op", "!"):
            self.i += 1
            inner = self.unary()
            return lambda lb: t_not(inner(lb))
        if self.peek() == ("op", "("):
            self.i += 1
            inner = self.or_()
            self.take("op", ")")
            return inner
        return self.term()

    def term(self) -> Predicate:
        word = self.take("word")
        if word in ("all", "has", "global") and self.peek() == ("op", "("):
            self.take("op", "(")
            if word == "all":
                self.take("op", ")")
                return ALL.predicate
            if word == "global":
                raise SelectorError(f"selector {self.text!r}: global() (non-namespaced endpoints) is not modelled")
            key = self.take("word")
            self.take("op", ")")
            return _compare(key, lambda _v: True, False)
        kind, value = self.peek()
        if (kind, value) == ("op", "=="):
            self.i += 1
            want = self.take("str")
            return _compare(word, lambda v: v == want, False)
        if (kind, value) == ("op", "!="):
            self.i += 1
            want = self.take("str")
            return _compare(word, lambda v: v != want, True)
        if value == "in" or (value == "not" and self.peek(1)[1] == "in"):
            negate = value == "not"
            self.i += 2 if negate else 1
            values = self.string_set()
            return _compare(word, (lambda v: v not in values) if negate else (lambda v: v in values), negate)
        if value in ("contains", "starts", "ends"):
            self.i += 1
            if value != "contains":
                self.take("word", "with")
            want = self.take("str")
            test = {"contains": lambda v: want in v, "starts": lambda v: v.startswith(want),
                    "ends": lambda v: v.endswith(want)}[value]
            return _compare(word, test, False)
        raise SelectorError(f"selector {self.text!r}: cannot read the term starting at {word!r}")

    def string_set(self) -> frozenset[str]:
        self.take("op", "{")
        values: set[str] = set()
        while self.peek() != ("op", "}"):
            values.add(self.take("str"))
            if self.peek() == ("op", ","):
                self.i += 1
        self.take("op", "}")
        return frozenset(values)


def calico_selector(text: Any) -> Selector:
    """Parse a Calico selector expression (``SelectorError`` when unreadable)."""
    if not isinstance(text, str):
        raise SelectorError(f"selector {text!r} is not a string")
    return Selector(text, _Parser(text).parse())


def k8s_selector(spec: Any) -> Selector:
    """A Kubernetes LabelSelector (matchLabels, matchExpressions); ``{}`` selects everything."""
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping) or set(spec) - {"matchLabels", "matchExpressions"}:
        raise SelectorError(f"label selector {spec!r}: only matchLabels and matchExpressions are understood")
    parts: list[Predicate] = []
    words: list[str] = []
    for key, want in (spec.get("matchLabels") or {}).items():
        parts.append(_compare(str(key), lambda v, w=str(want): v == w, False))
        words.append(f"{key} == '{want}'")
    for expr in spec.get("matchExpressions") or []:
        if not isinstance(expr, Mapping) or not _KEY.match(str(expr.get("key", ""))):
            raise SelectorError(f"matchExpressions entry {expr!r} has no valid key")
        key, op = str(expr["key"]), expr.get("operator")
        values = frozenset(str(v) for v in expr.get("values") or [])
        if op == "In":
            parts.append(_compare(key, lambda v, s=values: v in s, False))
        elif op == "NotIn":
            parts.append(_compare(key, lambda v, s=values: v not in s, True))
        elif op == "Exists":
            parts.append(_compare(key, lambda _v: True, False))
        elif op == "DoesNotExist":
            parts.append(_compare(key, lambda _v: False, True))
        else:
            raise SelectorError(f"matchExpressions operator {op!r} is not In, NotIn, Exists or DoesNotExist")
        words.append(f"{key} {op} {sorted(values)}" if values else f"{key} {op}")

    def predicate(labels: Labels) -> Truth:
        result: Truth = True
        for part in parts:
            result = t_and(result, part(labels))
        return result

    return Selector(" && ".join(words) or "{}", predicate)
