"""What pydantic v2's ``model_json_schema()`` (and the ``openai`` client's strict form of it)
writes for common fields is enforced: a valid instance's JSON matches the grammar, one out of
bounds does not; and the ``openai`` client's ``parse`` gets an answer in range from
``localrun serve``. The grammars are read as regular expressions (tests/gbnf_regex.py).
"""

from __future__ import annotations

import datetime
import enum
import json
import re
import uuid
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
from pydantic import BaseModel, Field

from localrun.errors import UsageError
from localrun.prompt import grammar
from tests.gbnf_regex import to_regex


class Kind(enum.Enum):
    cat = "cat"
    dog = "dog"


class Owner(BaseModel):
    name: str = Field(min_length=1, max_length=12)
    phone: str = Field(pattern=r"^[0-9]{3}-[0-9]{4}$")


class Pet(BaseModel):
    age: int = Field(ge=0, le=120)
    legs: int = Field(gt=0, lt=9)
    kind: Kind
    sound: Literal["meow", "woof"]
    owner: Owner
    toys: list[str] = Field(min_length=1, max_length=3)
    counts: dict[str, int]
    born: datetime.date
    seen: datetime.datetime
    tag: uuid.UUID
    pair: tuple[int, bool]
    weight: float
    nickname: str | None = None  # last: the grammar writes the optional properties last


PET = Pet(
    age=120,
    legs=4,
    kind=Kind.cat,
    sound="meow",
    owner=Owner(name="Ann", phone="555-0100"),
    toys=["ball"],
    counts={"naps": 3},
    born=datetime.date(2020, 2, 29),
    seen=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    tag=uuid.UUID(int=7),
    pair=(1, True),
    weight=4.5,
)


def _matcher(schema: dict[str, Any]) -> re.Pattern[str]:
    return re.compile(to_regex(grammar.json_schema(schema).grammar))


def _with(**changes: Any) -> str:
    return json.dumps({**json.loads(PET.model_dump_json()), **changes})


@pytest.mark.parametrize("strict", [False, True])
def test_a_pydantic_models_grammar_takes_its_instances_and_not_what_breaks_them(
    strict: bool,
) -> None:
    from openai.lib._pydantic import to_strict_json_schema

    assert pydantic.VERSION.startswith("2.")
    schema = to_strict_json_schema(Pet) if strict else Pet.model_json_schema()
    matches = _matcher(schema).fullmatch
    assert matches(PET.model_dump_json())
    assert matches(_with(age=0, legs=8, nickname="Tom", toys=["a", "b", "c"]))
    for wrong in (
        _with(age=121),
        _with(age=-1),
        _with(legs=0),
        _with(legs=9),
        _with(kind="cow"),
        _with(owner={"name": "", "phone": "555-0100"}),
        _with(owner={"name": "Ann", "phone": "5550100"}),
        _with(toys=[]),
        _with(toys=["a", "b", "c", "d"]),
        _with(counts={"naps": "3"}),
        _with(born="2020-13-01"),
        _with(tag="not-a-uuid"),
        _with(pair=[1, True, 2]),
    ):
        assert not matches(wrong), wrong


def test_a_tagged_union_and_an_optional_model() -> None:
    class Cat(BaseModel):
        pet_type: Literal["cat"]
        lives: int = Field(ge=1, le=9)

    class Dog(BaseModel):
        pet_type: Literal["dog"]

    class Home(BaseModel):
        pet: Cat | Dog = Field(discriminator="pet_type")
        spare: Cat | None

    schema = Home.model_json_schema()
    assert "discriminator" in json.dumps(schema)
    matches = _matcher(schema).fullmatch
    assert matches('{"pet": {"pet_type": "cat", "lives": 9}, "spare": null}')
    assert matches('{"pet": {"pet_type": "dog"}, "spare": {"pet_type": "cat", "lives": 1}}')
    assert not matches('{"pet": {"pet_type": "cat", "lives": 10}, "spare": null}')
    assert not matches('{"pet": {"pet_type": "cow"}, "spare": null}')


def test_other_properties_beside_named_ones_never_rename_them() -> None:
    """The converter wrote other names as any string: {"a": "x"} broke a's type."""
    extra = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for additional in ({"type": "string"}, True):
        matches = _matcher({**extra, "additionalProperties": additional}).fullmatch
        assert matches('{"a": 1}') and matches("{}")
        assert not matches('{"a": "x"}') and not matches('{"a": 1, "a": "x"}')
    # A required name that properties does not list takes additionalProperties' schema.
    matches = _matcher(
        {"type": "object", "required": ["x"], "additionalProperties": {"type": "integer"}}
    ).fullmatch
    assert matches('{"x": 3}') and not matches('{"x": "3"}')
    with pytest.raises(UsageError, match=r"requires 'x' .* additionalProperties is false"):
        grammar.json_schema({"type": "object", "required": ["x"], "additionalProperties": False})


def test_a_fractions_bounds_are_refused_by_name() -> None:
    class Priced(BaseModel):
        price: float = Field(ge=0)

    with pytest.raises(UsageError) as e:
        grammar.json_schema(Priced.model_json_schema())
    assert "'minimum' (at $.properties.price) bounds a number" in e.value.message
    assert "integer" in (e.value.hint or "")


@pytest.mark.slow
def test_the_openai_clients_parse_gets_integers_in_range(
    localrun_home: Path, tiny_chat_model: Path
) -> None:
    import openai

    from tests.served import create_model, serving

    class Person(BaseModel):
        age: int = Field(ge=0, le=120)
        rank: int = Field(gt=-10, lt=-2)

    create_model(localrun_home, "tiny", f"FROM {tiny_chat_model}\n")
    with serving(localrun_home, "--model", "tiny") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        for seed in range(3):  # the tiny model's noise, three ways
            done = client.chat.completions.parse(
                model="tiny",
                messages=[{"role": "user", "content": "a person, as JSON"}],
                response_format=Person,
                max_tokens=200,
                temperature=1.0,
                seed=seed,
            )
            person = done.choices[0].message.parsed
            assert isinstance(person, Person), done.choices[0].message.content
            assert 0 <= person.age <= 120 and -10 < person.rank < -2
