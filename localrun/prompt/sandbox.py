"""The sandboxed Jinja environment chat templates render in (imported only to render).

Jinja's ``ImmutableSandboxedEnvironment`` stops a template from reaching Python's internals,
but not from asking for memory: ``'x' * 10**9`` or ``"%0999999999d" % 1`` is one C-level
operation that no time limit can interrupt. This environment checks, before each operation
that can make a large value, how large the value would be:

- the operators ``*``, ``+``, ``%`` and ``**``, and ``~`` (string concatenation);
- turning a value into text (``{{ x }}``, filters, ``%s``): a list holding a thousand
  references to one large string is cheap to hold and enormous to print;
- the filters and string methods that widen or repeat text (``center``, ``indent``,
  ``format``, ``join``, ``replace``, ``ljust``, ``zfill``, ``to_bytes``...);
- what a block collects (``{% set %}...{% endset %}``, macros, ``{% filter %}``).

Each render gets a :class:`Budget`: the largest single value, and the total text the
checked operations may make. Time and Python-level growth (a loop making small objects) are
bounded by the watchdog in :mod:`localrun.prompt.template`.

Over 400 lines because every checked operation and filter is listed here, in one place a
reader can audit against Jinja's list.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import string
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_WIDTH = 10_000  # a format width or precision, a filter's width: real templates use 2-4
MAX_INT_BITS = 100_000  # integers a template computes (10**30000 has about that many bits)


class TemplateTooLarge(Exception):
    """A template operation would make a value over the render's budget."""


class Budget:
    """What one render may make: a single value, and all checked values together (chars)."""

    def __init__(self, max_value: int, max_total: int) -> None:
        self.max_value = max_value
        self.max_total = max_total
        self.made = 0

    def charge(self, size: int, what: str) -> None:
        if size > self.max_value:
            raise TemplateTooLarge(f"{what} would make {size:,} characters")
        self.made += size
        if self.made > self.max_total:
            raise TemplateTooLarge(f"the template made more than {self.max_total:,} characters")


_local = threading.local()


def _budget() -> Budget:
    budget: Budget | None = getattr(_local, "budget", None)
    if budget is None:  # rendering outside render_bounded: the smallest useful budget
        budget = _local.budget = Budget(1_000_000, 16_000_000)
    return budget


def set_budget(budget: Budget | None) -> None:
    """Use ``budget`` for renders in this thread (None: the default)."""
    _local.budget = budget


def text_size(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` makes; stops counting once over ``limit``."""
    if isinstance(value, (str, bytes)):
        return len(value)
    total = 0
    stack = [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, (str, bytes)):
            total += len(v) + 2
        elif isinstance(v, dict):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(v)
            stack.extend(v)
        else:
            total += 24  # numbers, None, undefined, objects: short reprs
    return total


def _charge_text(values: Iterable[Any], what: str) -> None:
    budget = _budget()
    size = 0
    for v in values:
        size += text_size(v, budget.max_value - size)
        if size > budget.max_value:
            break
    budget.charge(size, what)


def _is_seq(x: Any) -> bool:
    return isinstance(x, (str, bytes, list, tuple))


def _check_int(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateTooLarge(f"{what} would make an integer of {bits:,} bits")


def _check_percent_format(fmt: str) -> None:
    """``'%05d' % x``: widths and precisions must be small and literal."""
    for m in re.finditer(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?", fmt):
        for n in m.groups():
            if n == "*" or (n and int(n) > MAX_WIDTH):
                raise TemplateTooLarge(f"the format '{m.group(0)}' asks for too wide a field")


def _check_brace_format(fmt: str) -> None:
    """``'{:>5}'.format(x)``: the same rule for str.format's specs."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # format() itself reports the error
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise TemplateTooLarge("a format spec made from other values is not allowed")
        if any(int(n) > MAX_WIDTH for n in re.findall(r"\d+", spec)):
            raise TemplateTooLarge(f"the format spec '{spec}' asks for too wide a field")


def _binop_size(op: str, left: Any, right: Any) -> None:
    budget = _budget()
    if op == "*":
        if _is_seq(left) and isinstance(right, int):
            seq, n = left, right
        elif _is_seq(right) and isinstance(left, int):
            seq, n = right, left
        elif isinstance(left, int) and isinstance(right, int):
            _check_int(left.bit_length() + right.bit_length(), "'*'")
            return
        else:
            return
        if n > 0 and len(seq) > 0:
            # The result holds n references to each item: what it costs to print counts too.
            per = text_size(seq, budget.max_value)
            budget.charge(min(per * n, budget.max_value + 1), "'*'")
    elif op == "+" and _is_seq(left) and _is_seq(right):
        _charge_text((left, right), "'+'")
    elif op == "%" and isinstance(left, (str, bytes)):
        _check_percent_format(left if isinstance(left, str) else left.decode("latin-1"))
        _charge_text((left, right), "'%'")
    elif op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        growth = left.bit_length() if abs(left) > 1 else 0  # 0, 1 and -1 stay small
        _check_int(growth * min(right, MAX_INT_BITS + 1), "'**'")


# -- string methods and filters that widen or repeat text ---------------------------------


def _width(value: Any, what: str) -> None:
    if isinstance(value, int) and value > MAX_WIDTH:
        raise TemplateTooLarge(f"{what} asks for a width of {value:,}")


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Check a call of a str, bytes or int method before it runs."""
    # str.format reaches us wrapped by the sandbox: the method is then ``__wrapped__``.
    method = getattr(obj, "__wrapped__", obj)
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, (str, bytes)):
        all_args = (*args, *kwargs.values())
        if name in ("center", "ljust", "rjust", "zfill"):
            _width(all_args[0] if all_args else 0, name)
        elif name == "expandtabs":
            tab = all_args[0] if all_args else 8
            _width(tab, name)
            count = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            _budget().charge(len(owner) + count * (tab if isinstance(tab, int) else 8), name)
        elif name == "replace" and len(args) >= 2:
            old, new = args[0], args[1]
            if isinstance(old, (str, bytes)) and isinstance(new, (str, bytes)):
                hits = owner.count(old) if old else len(owner) + 1  # type: ignore[arg-type]
                _budget().charge(len(owner) + hits * len(new), name)
        elif name == "join" and args:
            items = list(args[0])
            _charge_text(items, name)
            _budget().charge(len(owner) * max(len(items) - 1, 0), name)
        elif name in ("format", "format_map"):
            _check_brace_format(owner if isinstance(owner, str) else "")
            _charge_text((owner, *all_args), name)
        elif name == "translate":
            table = args[0] if args else None
            longest = (
                max((text_size(v, MAX_WIDTH) for v in table.values()), default=1)
                if (isinstance(table, dict))
                else 1
            )
            _budget().charge(len(owner) * max(longest, 1), name)
    elif isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        _width(length, name)


# Filters that make new text about as large as their input (the others select, count or
# reorder, and make nothing large).
_TEXT_FILTERS = frozenset(
    [
        "capitalize",
        "center",
        "e",
        "escape",
        "forceescape",
        "format",
        "indent",
        "lower",
        "pprint",
        "replace",
        "string",
        "striptags",
        "title",
        "tojson",
        "trim",
        "truncate",
        "upper",
        "urlencode",
        "urlize",
        "wordwrap",
        "xmlattr",
    ]
)


def _filter_check(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Check a filter's arguments before it runs (``args[0]`` is the value filtered)."""
    value = args[0] if args else None
    rest = (*args[1:], *kwargs.values())
    if name in ("center", "indent", "batch", "slice"):
        for n in rest:
            if isinstance(n, int) and not isinstance(n, bool):
                _width(n, name)
        if name == "indent" and rest and isinstance(rest[0], str):
            lines = str(value).count("\n") + 1 if isinstance(value, str) else 1
            _budget().charge(len(rest[0]) * lines, name)
    elif name == "tojson":
        indent = kwargs.get("indent", args[1] if len(args) > 1 else None)
        _width(indent, "tojson indent")
    elif name == "format" and isinstance(value, str):
        _check_percent_format(value)
    elif name == "replace" and len(args) >= 3:
        s, old, new = str(value), str(args[1]), str(args[2])
        hits = s.count(old) if old else len(s) + 1
        _budget().charge(len(s) + hits * len(new), name)
    elif name == "join" and value is not None and not isinstance(value, str):
        items = list(value)
        sep = str(args[1]) if len(args) > 1 else str(kwargs.get("d", ""))
        _budget().charge(len(sep) * max(len(items) - 1, 0), name)
        _charge_text(items, name)
        return
    elif name == "sum":
        start = kwargs.get("start", args[2] if len(args) > 2 else 0)
        if not isinstance(start, (int, float)):
            raise TemplateTooLarge("sum adds numbers only in templates")
    if name in _TEXT_FILTERS:
        _charge_text((value, *rest), name)


_PASSED = (Context, nodes.EvalContext, jinja2.Environment)


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)  # keeps jinja's pass_context / pass_environment markers
    def checked(*args: Any, **kwargs: Any) -> Any:
        # The context, eval context or environment comes first when the filter asks for it.
        values = args[1:] if args and isinstance(args[0], _PASSED) else args
        _filter_check(name, values, kwargs)
        return f(*args, **kwargs)

    return checked


def _tojson(
    value: Any,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
) -> str:
    """JSON as transformers' templates get it: keys in their order, text as it is (Jinja's
    own sorts keys and escapes <, >, &, ' and all that is not ASCII), and a filter's
    generator (``tools | map(attribute='function')``) as a list."""
    return json.dumps(
        value,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
        ensure_ascii=ensure_ascii,
        default=_listed,
    )


def _listed(value: Any) -> Any:
    if isinstance(value, Iterator):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    _check_percent_format(fmt)
    if len(fmt) > MAX_WIDTH:
        raise TemplateTooLarge("strftime_now's format is too long")
    return datetime.datetime.now().strftime(fmt)


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``, as transformers defines it.

    Templates mark the assistant's text with it (for training masks); rendering a prompt,
    the block is just its body.
    """

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares it without ClassVar)

    def parse(self, parser: Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _CodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a checked join instead of ``str_join``."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _checked_join(parts: Iterable[Any]) -> str:
    items = list(parts)
    _charge_text(items, "'~'")
    return "".join(str(x) for x in items)


def _checked_concat(parts: Iterable[str]) -> str:
    """What a block, a macro or ``{% filter %}`` collected, joined (``environment.concat``)."""
    items = list(parts)
    _charge_text(items, "a block")
    return "".join(items)


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}``: printing a value must not make more than the budget allows."""
    if not isinstance(value, str):
        _charge_text((value,), "printing a value")
    return value


class _Unknown(jinja2.ChainableUndefined):
    """A variable the caller did not pass: empty, and as harmless as transformers makes it.

    Printing it, testing it (``is defined``), iterating it, reading its attributes work as in
    transformers' ``apply_chat_template``; joined to text with ``+`` it counts as empty text
    too (FireFunction v2 adds its undefined ``functions`` to its system prompt).
    """

    def __add__(self, other: Any) -> Any:
        return other if isinstance(other, str) else self

    def __radd__(self, other: Any) -> Any:
        return other if isinstance(other, str) else self


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every operation that can make a large value checked first."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(["*", "+", "%", "**"])
    concat = staticmethod(_checked_concat)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _binop_size(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_method(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    checked_join = staticmethod(_checked_join)


@functools.cache
def environment() -> BoundedEnvironment:
    """One environment for every render: compiling it again costs time at each turn."""
    # As transformers renders templates: `break` and `continue`, and `generation` blocks.
    env = BoundedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlock],
        finalize=_finalize,
        undefined=_Unknown,
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)  # makes text in a Python loop: no template needs it
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env
