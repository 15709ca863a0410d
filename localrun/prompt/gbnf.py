"""What llama.cpp's grammar code can hold: every grammar is checked here before it sees it.

The limits, measured on llama-cpp-python 0.3.36 with the demo model's vocabulary:

- its parser recurses once per level of parentheses, about 420 bytes of stack a level:
  19,000 levels crash an 8 MiB stack (SIGSEGV), 2,400 a 1 MiB one. The schema converter
  writes ``maxLength: N`` as N nested optional groups, so a schema of ``maxLength: 100000``
  killed the process (see :mod:`localrun.prompt.schema` for the schema's own limits);
- ``{m,n}``: past 2,000 llama.cpp refuses ``m`` and silently drops ``n``; ``m`` over ``n``
  made it allocate until it died;
- it follows every way a text can still match at once, and compares every new parse stack
  with every earlier one: the time to build a grammar (and to follow it, each token) grows
  with the square of the alternatives open at once: 5,000 took 29 ms, 20,000 0.48 s, 100,000
  (a ``format`` enum) minutes of a core. Repetitions within repetitions multiply the ways
  open: four levels of ``{0,20}`` ran for minutes; so do alternatives that match the same
  character, at each repetition: nine of them (``. | . | [^?] ...``) three times within three
  times took 193 s for one token;
- its left-recursion check is quadratic in a chain of rules, and recursive: 10,000 rules
  took 1 s, 60,000 took 90 s, 100,000 crashed;
- its text ends at a NUL byte, and its ``\\u`` escapes take code points UTF-8 cannot write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from localrun.errors import UsageError

MAX_GRAMMAR_BYTES = 256 * 1024  # a grammar's text (a 4,000-value enum's grammar is 130 KB)
MAX_RULES = 4_000
MAX_ALTERNATIVES = 5_000
MAX_NESTING = 1_024  # parentheses within parentheses
MAX_REPEAT = 2_000  # llama.cpp's own bound on {m,n}, and on repetitions multiplied together

_NAME = re.compile(r"[a-zA-Z0-9-]+")
_ESCAPE_DIGITS = {"x": 2, "u": 4, "U": 8}


def check(text: str, what: str = "the grammar") -> None:
    """Refuse, naming the limit, a grammar that llama.cpp's grammar code cannot hold."""
    if len(text) > MAX_GRAMMAR_BYTES:
        raise UsageError(
            f"{what} is {len(text):,} characters, more than {MAX_GRAMMAR_BYTES:,}",
            "simplify the grammar",
        )
    if "\0" in text:
        raise UsageError(
            f"{what} holds a NUL character (llama.cpp would read no further)",
            "remove it; write \\x00 in a literal for the character itself",
        )
    rules: dict[str, list[tuple[str, str | int]]] = {}
    alternatives = depth = deepest = 0
    body: list[tuple[str, str | int]] = []
    for kind, value in _tokens(text, what):
        if kind == "rule":
            body = rules.setdefault(str(value), [])
            continue
        body.append((kind, value))
        if kind == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif kind == ")":
            depth -= 1
        elif kind == "|":
            alternatives += 1
    for count, limit, name in (
        (len(rules), MAX_RULES, "rules"),
        (alternatives, MAX_ALTERNATIVES, "alternatives"),
        (deepest, MAX_NESTING, "levels of parentheses"),
    ):
        if count > limit:
            raise UsageError(
                f"{what} has {count:,} {name}, more than the {limit:,} llama.cpp can hold here",
                "simplify the grammar",
            )
    if "root" in rules and not rules["root"]:
        raise UsageError(
            f"{what} allows only an empty answer: its root rule is empty",
            'give root what the answer must be, such as root ::= "yes" | "no"',
        )
    ways = _Ways(rules)
    for name in rules:
        if ways.of(name) > MAX_REPEAT:
            raise UsageError(
                f"{what} can be read {ways.of(name):,} ways at once (rule {name}: repetitions "
                "within repetitions, and alternatives that match the same character): "
                f"llama.cpp would follow each, and can hold {MAX_REPEAT:,}",
                "lower the bounds of the repetitions inside one another, and let fewer "
                "alternatives begin with . or [^...]",
            )


def _tokens(text: str, what: str) -> Iterator[tuple[str, str | int]]:
    """The grammar's parts as llama.cpp's parser reads them: ``rule`` (a definition's name),
    ``name`` (a reference), ``item`` (a literal, a class, a token, ``.``), ``(``, ``)``,
    ``|`` and ``times`` (a repetition's most, 1 for ``*``, ``+`` and ``?``)."""
    i, n = 0, len(text)
    closers = {'"': '"', "[": "]", "<": ">"}
    while i < n:
        c = text[i]
        if c in closers:
            negated = c == "[" and text[i + 1 : i + 2] == "^"
            end, i = closers[c], i + 1
            while i < n and text[i] != end:
                if text[i] == "\\":
                    i = _escape(text, i, what)
                else:
                    i += 1
            yield "item", "wide" if negated else ""
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "()|":
            yield c, ""
        elif c == ".":
            yield "item", "wide"
        elif c in "*+?":
            yield "times", 1
        elif c == "{":
            close = text.find("}", i)
            inside = text[i + 1 : close if close > 0 else n]
            bounds = [int(b) for b in re.findall(r"\d+", inside)]
            shown = text[i : close + 1][:40]
            if any(b > MAX_REPEAT for b in bounds):
                raise UsageError(
                    f"{what} repeats an item {shown} times: llama.cpp can hold at most "
                    f"{{{MAX_REPEAT}}}",
                    "lower the bound, or use * or + for no bound",
                )
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                raise UsageError(
                    f"{what} repeats an item {shown} times: its least is more than its most",
                    "give {m,n} with m at most n",
                )
            yield "times", max(bounds[-1] if bounds else 1, 1)
            i = close if close > 0 else n
        elif found := _NAME.match(text, i):
            after = text[found.end() :].lstrip(" \t")
            if after.startswith("::="):
                yield "rule", found.group(0)
                i = found.end() + (len(text) - found.end() - len(after)) + 2
            else:
                yield "name", found.group(0)
                i = found.end() - 1
        i += 1


def _escape(text: str, i: int, what: str) -> int:
    """Where an escape at ``i`` ends; a code point UTF-8 cannot write is refused."""
    letter = text[i + 1 : i + 2]
    digits = _ESCAPE_DIGITS.get(letter)
    if digits is None:
        return i + 2
    hex_digits = text[i + 2 : i + 2 + digits]
    try:
        point = int(hex_digits, 16)
    except ValueError:
        return i + 2  # llama.cpp says what is wrong with it
    if 0xD800 <= point <= 0xDFFF or point > 0x10FFFF:
        raise UsageError(
            f"{what} escapes \\{letter}{hex_digits}, which is no character UTF-8 can write",
            "give a code point up to \\U0010FFFF, outside the surrogates D800-DFFF",
        )
    return i + 2 + digits


class _Ways:
    """How many ways llama.cpp may follow at once within a rule, the rules it refers to
    included (a rule that refers back to itself counts once: llama.cpp loops there).

    Two factors: the positions an item may be at within repetitions (``{0,20}`` within
    ``{0,20}``: 400), and the alternatives that all match the same character, each of which
    it follows: alternatives that begin with an item taking any character (``.``, ``[^...]``)
    within a group, multiplied again at each repetition of the group (``(. | .){0,3}``:
    2 x 2 x 2). A random grammar of nine such alternatives in a group, repeated three times
    within three repetitions, took one token's grammar check 193 s of a core.
    """

    def __init__(self, rules: dict[str, list[tuple[str, str | int]]]) -> None:
        self.rules = rules
        self.known: dict[str, tuple[int, int]] = {}  # a rule's (positions, alternatives)
        self.open: set[str] = set()

    def of(self, name: str) -> int:
        """The ways within rule ``name``; depth-first without recursion (a chain of 4,000
        rules is deeper than Python's stack)."""
        todo = [name]
        while todo:
            top = todo[-1]
            if top in self.known or top not in self.rules:
                todo.pop()
                continue
            waiting = [
                str(v)
                for k, v in self.rules[top]
                if k == "name" and v in self.rules and v not in self.known and v not in self.open
            ]
            if waiting and top not in self.open:
                self.open.add(top)
                todo.extend(waiting)
                continue
            self.known[top] = self._inside(top)
            self.open.discard(top)
            todo.pop()
        positions, alternatives = self.known.get(name, (1, 1))
        return positions * alternatives

    def _inside(self, name: str) -> tuple[int, int]:
        # Per open group: the most (positions, alternatives) of an item in it, how many of its
        # alternatives begin with a wide item, and whether the next item begins one.
        inside: list[list[int]] = [[1, 1]]
        wide, first = [0], [True]
        last = (1, 1)  # the item before a repetition
        for kind, value in self.rules[name]:
            if kind == "(":
                inside.append([1, 1])
                wide.append(0)
                first.append(True)
                continue
            if kind == "|":
                first[-1] = True
                continue
            if kind == ")" and len(inside) > 1:
                positions, alternatives = inside.pop()
                begins, _ = wide.pop(), first.pop()
                last = (positions, alternatives * max(begins, 1))
                if first[-1]:
                    wide[-1] += begins  # its wide alternatives begin the enclosing one's
            elif kind == "times":
                last = (last[0] * int(value), min(last[1] ** int(value), 1 << 40))
            elif kind == "name":
                last = self.known.get(str(value), (1, 1))  # not known: it refers back, a loop
            elif kind == "item":
                last = (1, 1)
                if value == "wide" and first[-1]:
                    wide[-1] += 1
            first[-1] = False
            top = inside[-1]
            top[0], top[1] = max(top[0], last[0]), max(top[1], last[1])
        positions, alternatives = inside[0]
        return positions, alternatives * max(wide[0], 1)
