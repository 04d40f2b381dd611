"""Review gates: which decisions go to people. Pure: no I/O, no clock.

A gate fires on a call's decoded inputs (named by the version's profile), its outputs,
the sidecar's parity flags and, for a shadow copy, how it agreed with the primary:

- ``band``: an output in [low, high] (the model is unsure there);
- ``rule``: a small expression over named features and outputs (``claim_amount >
  10000 and risk_score > 0.2``), parsed here into a tree of known node kinds and
  evaluated over the call's rows with numpy; never ``eval``;
- ``flags``: a parity flag starting with one of the given prefixes (``schema``,
  ``drift:claim_amount``);
- ``shadow_disagree``: a shadow copy whose decisions differed from its primary's.

A call with several rows is sent to review when any row fires a gate; the first gate
that fires (in the model's order) is the one named.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

MAX_RULE_CHARS = 500
MAX_RULE_NODES = 100

Column = NDArray[np.float64]


class RuleError(ValueError):
    """A rule that cannot be used; the message says where."""


_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne}
_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv}


@dataclass(frozen=True)
class Rule:
    """A parsed rule: its text, the names it reads, and its tree compiled twice: over
    one row's floats (the usual call, where numpy's per-operation cost would dominate)
    and over columns of rows."""

    text: str
    names: frozenset[str]
    scalar: Callable[[Mapping[str, Any]], Any] = field(repr=False, compare=False)
    vector: Callable[[Mapping[str, Any]], Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``text`` as a rule; RuleError naming what is not allowed."""
        if len(text) > MAX_RULE_CHARS:
            raise RuleError(f"rule longer than {MAX_RULE_CHARS} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise RuleError(f"rule {text!r} is not an expression: {exc}") from None
        nodes = list(ast.walk(tree))
        if len(nodes) > MAX_RULE_NODES:
            raise RuleError(f"rule has more than {MAX_RULE_NODES} parts")
        names: set[str] = set()
        for node in nodes:
            _allowed(node, text)
            if isinstance(node, ast.Name):
                names.add(node.id)
        if not _is_boolean(tree):
            raise RuleError(f"rule {text!r} is not a condition (compare something)")
        return cls(text, frozenset(names), _compile(tree, False), _compile(tree, True))

    def holds(self, values: Mapping[str, Any], rows: int) -> bool:
        """Whether the rule holds for any row (a name without a value: for none)."""
        if not self.names <= values.keys():
            return False
        if rows == 1:  # one row's values are floats (`Facts`)
            return bool(self.scalar(values))
        return bool(self.evaluate(values, rows).any())

    def evaluate(self, values: Mapping[str, Column], rows: int) -> NDArray[np.bool_]:
        """Per row, whether the rule holds (a name without a value: no row does)."""
        if not self.names <= values.keys():
            return np.zeros(rows, dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.asarray(self.vector(values), dtype=bool)
        return np.broadcast_to(out, (rows,)).copy()


_NODES = (ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp,
          ast.Compare, ast.Name, ast.Load, ast.Constant, *_COMPARE, *_ARITH)


def _allowed(node: ast.AST, text: str) -> None:
    if not isinstance(node, _NODES):
        raise RuleError(f"rule {text!r}: {type(node).__name__.lower()} is not allowed "
                        "(use names, numbers, + - * /, comparisons, and/or/not)")
    if isinstance(node, ast.Constant) and (
            not isinstance(node.value, int | float) or isinstance(node.value, bool)):
        raise RuleError(f"rule {text!r}: only numbers may be written ({node.value!r})")


def _is_boolean(node: ast.expr) -> bool:
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.BoolOp):
        return all(_is_boolean(v) for v in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _is_boolean(node.operand)
    return False


def _divide(a: float, b: float) -> float:
    """IEEE division, as numpy does it over columns: x/0 is ±inf, 0/0 is nan."""
    try:
        return a / b
    except ZeroDivisionError:
        return math.copysign(math.inf, a) if a else math.nan


Compiled = Callable[[Mapping[str, Any]], Any]


def _compile(node: ast.expr, vector: bool) -> Compiled:
    """``node`` as a function of the values by name: floats, or (``vector``) columns."""
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float), "Rule.parse allows numbers only"
        constant = float(node.value)
        return lambda _: constant
    if isinstance(node, ast.Name):
        name = node.id
        return lambda values: values[name]
    if isinstance(node, ast.BinOp):
        left, right = _compile(node.left, vector), _compile(node.right, vector)
        arith = _divide if isinstance(node.op, ast.Div) and not vector \
            else _ARITH[type(node.op)]
        return lambda values: arith(left(values), right(values))
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, vector)
        if isinstance(node.op, ast.Not):
            negate = np.logical_not if vector else operator.not_
            return lambda values: negate(operand(values))
        if isinstance(node.op, ast.USub):
            return lambda values: -operand(values)
        return operand
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, vector) for v in node.values]
        both = isinstance(node.op, ast.And)
        if vector:
            join = np.logical_and if both else np.logical_or
            return lambda values: functools.reduce(join, (p(values) for p in parts))
        if both:
            return lambda values: all(p(values) for p in parts)
        return lambda values: any(p(values) for p in parts)
    assert isinstance(node, ast.Compare)
    first = _compile(node.left, vector)
    steps = [(_COMPARE[type(op)], _compile(right, vector))
             for op, right in zip(node.ops, node.comparators, strict=True)]
    if vector:
        def columns(values: Mapping[str, Any]) -> Any:
            left, out = first(values), True
            for compare, right in steps:
                value = right(values)
                out = np.logical_and(out, compare(left, value))
                left = value
            return out
        return columns

    def scalars(values: Mapping[str, Any]) -> bool:
        left = first(values)
        for compare, right in steps:
            value = right(values)
            if not compare(left, value):
                return False
            left = value
        return True
    return scalars


@dataclass(frozen=True)
class Gate:
    """One gate of a model (exactly one of its conditions is set)."""

    name: str
    band: tuple[str, float, float] | None = None  # (output, low, high)
    rule: Rule | None = None
    flags: tuple[str, ...] = ()
    shadow_disagree: bool = False
    priority: int = 0       # higher: reviewed first
    sla_s: float = 86400.0  # due this long after it was queued

    def fires(self, call: Facts) -> bool:
        """Whether this gate sends ``call`` to review."""
        if call.shadow:  # nobody acted on a shadow copy: only its disagreement counts
            return self.shadow_disagree and call.disagreed
        if self.band is not None:
            output, low, high = self.band
            y = call.values.get(output)
            if y is None:
                return False
            if isinstance(y, np.ndarray):
                return bool(np.any((y >= low) & (y <= high)))
            return low <= y <= high
        if self.rule is not None:
            return self.rule.holds(call.values, call.rows)
        if self.flags:
            return any(flag.startswith(self.flags) for flag in call.flags)
        return False


@dataclass(slots=True)
class Facts:
    """What the gates of one call look at."""

    # Per feature name and per output name: a value per row (one row: a float).
    values: Mapping[str, Column | float]
    rows: int
    flags: Sequence[str] = ()
    shadow: bool = False
    disagreed: bool = False  # a shadow copy's decisions differed from the primary's


def first_fired(gates: Sequence[Gate], call: Facts) -> Gate | None:
    """The gate that sends ``call`` to review, if any."""
    for gate in gates:
        if gate.fires(call):
            return gate
    return None


def reads(gates: Sequence[Gate]) -> frozenset[str]:
    """The features and outputs ``gates`` look at."""
    names: set[str] = set()
    for gate in gates:
        if gate.band is not None:
            names.add(gate.band[0])
        if gate.rule is not None:
            names |= gate.rule.names
    return frozenset(names)


def named_values(inputs: Mapping[str, NDArray[Any]], outputs: Mapping[str, NDArray[Any]],
                 input_name: str | None, features: Sequence[str],
                 needed: frozenset[str] | None = None) -> tuple[
                     dict[str, Column | float], int]:
    """A call's values by name (feature columns of ``input_name``, and each output with one
    value per row; only those ``needed``, if given), and its row count. One row's values
    are floats, read without numpy's per-element costs (this runs on every gated call)."""
    values: dict[str, Column | float] = {}
    rows = 0
    x = inputs.get(input_name) if input_name else None
    if x is not None and x.ndim == 2 and x.shape[1] == len(features):
        rows = x.shape[0]
        row = x[0].tolist() if rows == 1 else None
        for i, name in enumerate(features):
            if needed is None or name in needed:
                values[name] = float(row[i]) if row is not None else \
                    np.asarray(x[:, i], dtype=np.float64)
    for name, y in outputs.items():
        if (needed is not None and name not in needed) or y.dtype.kind not in "fiub" or \
                not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            continue
        count = y.shape[0]
        if rows and count != rows:
            continue
        rows = rows or count
        values[name] = float(y.item()) if count == 1 else \
            y.reshape(count).astype(np.float64)
    return values, rows
