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
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    """A parsed rule: its text, the names it reads, and its tree."""

    text: str
    names: frozenset[str]
    tree: ast.expr

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
        return cls(text, frozenset(names), tree)

    def evaluate(self, values: Mapping[str, Column], rows: int) -> NDArray[np.bool_]:
        """Per row, whether the rule holds (a name without a value: no row does)."""
        if not self.names <= values.keys():
            return np.zeros(rows, dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.asarray(_value(self.tree, values), dtype=bool)
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


def _value(node: ast.expr, values: Mapping[str, Column]) -> Any:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float), "Rule.parse allows numbers only"
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        return _ARITH[type(node.op)](_value(node.left, values), _value(node.right, values))
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand, values)
        if isinstance(node.op, ast.Not):
            return np.logical_not(operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BoolOp):
        parts = [_value(v, values) for v in node.values]
        join = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        joined = parts[0]
        for part in parts[1:]:
            joined = join(joined, part)
        return joined
    assert isinstance(node, ast.Compare)
    left = _value(node.left, values)
    out: Any = True
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _value(right_node, values)
        out = np.logical_and(out, _COMPARE[type(op)](left, right))
        left = right
    return out


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
            return y is not None and bool(np.any((y >= low) & (y <= high)))
        if self.rule is not None:
            return bool(self.rule.evaluate(call.values, call.rows).any())
        if self.flags:
            return any(flag.startswith(self.flags) for flag in call.flags)
        return False


@dataclass(frozen=True)
class Facts:
    """What the gates of one call look at."""

    values: Mapping[str, Column]  # per feature name and per output name: a value per row
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


def named_values(inputs: Mapping[str, NDArray[Any]], outputs: Mapping[str, NDArray[Any]],
                 input_name: str | None, features: Sequence[str]) -> tuple[
                     dict[str, Column], int]:
    """A call's values by name (feature columns of ``input_name``, and each output with one
    value per row), and its row count."""
    values: dict[str, Column] = {}
    rows = 0
    x = inputs.get(input_name) if input_name else None
    if x is not None and x.ndim == 2 and x.shape[1] == len(features):
        rows = x.shape[0]
        for i, name in enumerate(features):
            values[name] = np.asarray(x[:, i], dtype=np.float64)
    for name, y in outputs.items():
        flat = np.asarray(y)
        if flat.ndim == 2 and flat.shape[1] == 1:
            flat = flat[:, 0]
        if flat.ndim == 1 and np.issubdtype(flat.dtype, np.number):
            rows = rows or flat.shape[0]
            if not rows or flat.shape[0] == rows:
                values[name] = flat.astype(np.float64)
    return values, rows
