import pytest

from localrun.errors import TemplateError
from localrun.prompt.template import Message, render
from tests.tinygguf import CHATML_TEMPLATE

NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_renders_messages_and_generation_prompt() -> None:
    text = render(CHATML_TEMPLATE, [Message("system", "Be brief."), Message("user", "Hi")])
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_special_tokens_are_available() -> None:
    text = render("{{ bos_token }}x{{ eos_token }}", [], bos_token="<s>", eos_token="</s>")
    assert text == "<s>x</s>"


def test_strftime_now_is_available() -> None:
    assert render("{{ strftime_now('%Y') }}", [])[:2] in ("20", "21")


def test_system_is_folded_when_the_template_rejects_it() -> None:
    text = render(NO_SYSTEM, [Message("system", "Be brief."), Message("user", "Hi")])
    assert text == "[user]Be brief.\n\nHi[assistant]"


def test_template_error_is_reported() -> None:
    with pytest.raises(TemplateError, match="boom"):
        render("{{ raise_exception('boom') }}", [Message("user", "x")])


def test_syntax_error_is_reported() -> None:
    with pytest.raises(TemplateError, match="not valid Jinja"):
        render("{% for %}", [])


def test_template_cannot_reach_python_internals() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError):
        render(evil, [Message("user", "x")])


def test_template_cannot_mutate_objects() -> None:
    with pytest.raises(TemplateError):
        render("{% set l = [] %}{{ l.append(1) }}", [Message("user", "x")])


ENDLESS = (
    "{% for a in range(99999) %}{% for b in range(99999) %}{% for c in range(99999) %}"
    "{% if c < 0 %}x{% endif %}{% endfor %}{% endfor %}{% endfor %}"
)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_endless_template_is_stopped(where: str) -> None:
    import threading
    import time

    caught: list[BaseException] = []

    def attempt() -> None:
        start = time.monotonic()
        try:
            render(ENDLESS, [Message("user", "x")])
        except BaseException as e:
            caught.append(e)
        caught.append(AssertionError(time.monotonic() - start))

    if where == "main thread":
        attempt()
    else:
        worker = threading.Thread(target=attempt)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "the template was not stopped in the worker thread"
    error, elapsed = caught
    assert isinstance(error, TemplateError) and "did not finish rendering" in error.message
    assert error.hint and "TEMPLATE" in error.hint
    assert float(str(elapsed)) < 5
    # Nothing is left pending afterwards: a normal render is unaffected.
    time.sleep(0.05)
    assert render(CHATML_TEMPLATE, [Message("user", "x")]).endswith("assistant\n")


@pytest.mark.slow
def test_two_threads_rendering_at_once_are_stopped_separately() -> None:
    import threading

    results: dict[str, str] = {}

    def endless() -> None:
        try:
            render(ENDLESS, [Message("user", "x")])
        except TemplateError as e:
            results["endless"] = e.message

    def quick() -> None:
        for _ in range(200):
            results["quick"] = render(CHATML_TEMPLATE, [Message("user", "x")])

    threads = [threading.Thread(target=endless), threading.Thread(target=quick)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert "did not finish" in results["endless"]
    assert results["quick"].endswith("assistant\n")


# Each asks for gigabytes in one C-level operation, or grows without end in a loop.
MEMORY_BOMBS = {
    "string repeat": "{{ 'x' * 10**9 }}",
    "percent width": '{{ "%0999999999d" % 1 }}',
    "list repeat": "{{ [1] * 10**9 }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "format filter": '{{ "%0999999999d"|format(1) }}',
    "center method": "{{ 'x'.center(10**9) }}",
    "center filter": "{{ 'x'|center(10**9) }}",
    "indent filter": "{{ 'a\nb'|indent(10**9) }}",
    "zfill": "{{ '1'.zfill(10**9) }}",
    "to_bytes": "{{ (1).to_bytes(10**9, 'big') }}",
    "huge power": "{{ 7 ** (10**7) }}",
    "replace": "{% set s = 'a' * 100000 %}{{ s|replace('a', s) }}",
    "translate": "{% set s = 'a' * 100000 %}{{ s.translate({97: s}) }}",
    "join aliases": "{% set s = 'x' * 900000 %}{{ ([s] * 100)|join }}",
    "print aliases": "{% set s = 'x' * 90000 %}{{ [s] * 100 }}",
    "concat doubling": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "recursive doubling": "{% macro f(s, n) %}{% if n > 0 %}{{ f(s ~ s, n - 1) }}"
    "{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ f('x', 40) }}",
    "block of aliases": "{% set s = 'x' * 900000 %}{% set b %}{% for i in range(100000) %}"
    "{{ s }}{% endfor %}{% endset %}{{ b|length }}",
    "distinct strings in a loop": "{% set s = 'x' * 900000 %}{% set b %}"
    "{% for i in range(100000) %}{{ s ~ i }}{% endfor %}{% endset %}{{ b|length }}",
    "small objects in a loop": "{% set b %}{% for i in range(100000) %}"
    "{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}{% endset %}{{ b|length }}",
    "endless output": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{{ j }}{% endfor %}{% endfor %}",
    "batch padding": "{{ [1]|batch(10**9, 0)|list }}",
    "tojson indent": "{{ [[[[1]]]]|tojson(indent=10**8) }}",
}

_BOMB_SCRIPT = """
import json, sys, time
from pathlib import Path
from localrun.errors import TemplateError
from localrun.prompt.template import Message, render


def peak_kb():  # this process's own high-water mark (ru_maxrss would count the parent's)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


start = time.monotonic()
try:
    render(sys.argv[1], [Message("user", "hi")])
    outcome = "rendered"
except TemplateError as e:
    outcome = e.message
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start,
                  "peak_mb": peak_kb() / 1024}))
"""


@pytest.mark.parametrize("name", list(MEMORY_BOMBS))
def test_template_cannot_exhaust_memory(name: str) -> None:
    """Each bomb gets a one-line error, in a process that stays under a few hundred MB."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT, MEMORY_BOMBS[name]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["outcome"] != "rendered"
    assert "\n" not in result["outcome"]
    assert result["peak_mb"] < 300, result
    assert result["seconds"] < 10, result


def test_real_sized_conversations_still_render() -> None:
    """The bounds leave room for long messages: a 3 MB message renders through ChatML."""
    big = "word " * 600_000
    text = render(CHATML_TEMPLATE, [Message("system", "s"), Message("user", big)])
    assert big in text


def test_template_source_too_long_is_refused() -> None:
    with pytest.raises(TemplateError, match="characters long"):
        render("x" * 2_000_001, [Message("user", "hi")])


def test_tools_is_none_for_templates_that_test_it() -> None:
    template = "{% if tools is not none %}TOOLS{% endif %}{{ messages[0]['content'] }}"
    assert render(template, [Message("user", "hi")]) == "hi"
