import pytest

from localrun.chat_template import Message, TemplateError, render
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


def test_endless_template_is_stopped() -> None:
    import time

    endless = (
        "{% for a in range(99999) %}{% for b in range(99999) %}{% for c in range(99999) %}"
        "{{ c }}{% endfor %}{% endfor %}{% endfor %}"
    )
    start = time.monotonic()
    with pytest.raises(TemplateError, match="did not finish rendering") as e:
        render(endless, [Message("user", "x")])
    assert time.monotonic() - start < 5
    assert e.value.hint and "TEMPLATE" in e.value.hint
    # The timer is gone afterwards: a normal render is unaffected.
    assert render(CHATML_TEMPLATE, [Message("user", "x")]).endswith("assistant\n")


def test_tools_is_none_for_templates_that_test_it() -> None:
    template = "{% if tools is not none %}TOOLS{% endif %}{{ messages[0]['content'] }}"
    assert render(template, [Message("user", "hi")]) == "hi"
