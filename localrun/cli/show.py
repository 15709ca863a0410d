"""``localrun show REF``: what a model is, from its GGUF header."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from localrun.cli import app
from localrun.cli.output import table
from localrun.errors import UsageError
from localrun.files import human_count, human_size

if TYPE_CHECKING:
    from localrun.models.recipes import Recipe


@app.command()
def show(
    ref: str = typer.Argument(
        ..., help="A pulled, created or library model, a Hub reference, 'demo' or a path."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    modelfile: bool = typer.Option(False, "--modelfile", help="Print the Modelfile."),
    parameters: bool = typer.Option(False, "--parameters", help="Print the parameters."),
    system: bool = typer.Option(False, "--system", help="Print the system prompt."),
    template: bool = typer.Option(False, "--template", help="Print the template."),
    license_: bool = typer.Option(False, "--license", help="Print the licence."),
    quants: bool = typer.Option(
        False, "--quants", help="A Hub repository's GGUF files, and where each would run here."
    ),
) -> None:
    """Show a model's details or its Modelfile.

    Architecture, size, quantization and where it is; or parts of its Modelfile.
    """
    from localrun.models.facts import model_facts, modelfile_of, unpulled_recipe
    from localrun.remote import registry

    if quants:
        _quants(ref, as_json)
        return
    if (remote := registry.find(ref)) is not None:
        from localrun.remote.client import describe

        said = describe(remote)
        if as_json:
            print(json.dumps({"name": remote.name, "remote": remote.url, **said}, indent=2))
            return
        rows = [("remote", remote.url), *((str(k), str(v)) for k, v in said.items())]
        print(f"Model {remote.name}")
        print("  " + table(("", ""), rows).replace("\n", "\n  ").lstrip())
        return
    if sum((modelfile, parameters, system, template, license_)) > 1:
        raise UsageError(
            "show takes one of --modelfile, --parameters, --system, --template, --license",
            "ask for one at a time",
        )
    if modelfile or parameters or system or template or license_:
        mf = modelfile_of(ref)
        if modelfile:
            print(mf.to_text(), end="")
        elif parameters:
            for name, setting in mf.parameters.items():
                print(f"{name:<16} {setting}")
            for stop in mf.stop:
                print(f"{'stop':<16} {json.dumps(stop)}")
        else:
            value = mf.system if system else mf.template if template else "\n".join(mf.license)
            print(value if value else "(none)")
        return
    if (recipe := unpulled_recipe(ref)) is not None:
        _unpulled(recipe, as_json)
        return
    facts = model_facts(ref)
    if as_json:
        print(json.dumps(facts.as_dict(), indent=2))
        return
    rows = [
        ("architecture", facts.architecture),
        ("parameters", human_count(facts.parameters)),
        ("quantization", facts.quantization or "-"),
        ("context length", str(facts.context_length or "-")),
        ("embedding length", str(facts.embedding_length or "-")),
        ("layers", str(facts.layers or "-")),
        ("chat template", _template_row(facts.chat_template, facts.capabilities)),
        ("capabilities", ", ".join(facts.capabilities)),
        ("license", facts.license or "-"),
        ("path", facts.path),
        ("size", human_size(facts.size)),
        ("sha256", facts.sha256),
    ]
    if (p := facts.projector) is not None:
        what = ", ".join((human_size(p.size), *p.modalities))
        rows.append(("projector", f"{Path(p.path).name} ({what})"))
    rows += _origin_rows(facts.origin or {})
    print(f"Model {facts.name}")
    print("  " + table(("", ""), rows).replace("\n", "\n  ").lstrip())


def _when(seconds: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(seconds)))  # type: ignore[arg-type]


def _origin_rows(origin: dict[str, object]) -> list[tuple[str, str]]:
    """Where the model came from: its Hub repository or registry manifest, and when."""
    rows = []
    if "repository" in origin:
        rows += [
            ("from", f"hf.co/{origin['repository']} at {origin['revision']}"),
            ("commit", str(origin["commit"])),
            ("file", str(origin["file"])),
        ]
    if "manifest" in origin:
        rows += [("from", f"{origin['name']} ({origin['registry']})"),
                 ("manifest", str(origin["manifest"]))]  # fmt: skip
    if origin.get("pulled_at"):
        rows.append(("pulled", _when(origin["pulled_at"])))
    if origin.get("created") and "manifest" not in origin:
        rows.append(("created", _when(origin["created"])))
    return rows


def _unpulled(recipe: Recipe, as_json: bool) -> None:
    """A library model that is not pulled: what its recipe says (its GGUF is not here)."""
    mf = recipe.modelfile
    settings = [f"{k} {v}" for k, v in mf.parameters.items()]
    if as_json:
        print(json.dumps({"name": recipe.name, "pulled": False, "from": mf.from_,
                          "description": recipe.description, "parameters": mf.parameters,
                          "aliases": list(recipe.aliases)}, indent=2))  # fmt: skip
        return
    rows = [
        ("description", recipe.description or "-"),
        ("from", mf.from_),
        ("parameters", ", ".join(settings) or "-"),
        *([("also called", ", ".join(recipe.aliases))] if recipe.aliases else []),
        ("get it with", f"localrun pull {recipe.name}"),
    ]
    print(f"Model {recipe.name} (in the library, not pulled)")
    print("  " + table(("", ""), rows).replace("\n", "\n  ").lstrip())


def _quants(ref: str, as_json: bool) -> None:
    """The files a Hub repository offers, their sizes, and where each would run here."""
    from localrun.engine.fit import ON_CPU, ON_GPU, PART_GPU, survey
    from localrun.hub.refs import is_hub_ref
    from localrun.models.resolve import hub_ref_for

    text = hub_ref_for(ref)
    if not is_hub_ref(text):
        raise UsageError(f"--quants lists a Hub repository's files; '{ref}' is not one",
                         "show hf.co/ORG/REPO --quants")  # fmt: skip
    repo, fits, here = survey(text)
    if as_json:
        print(json.dumps([{"quant": f.quant, "files": list(f.files), "size": f.weights,
                           "kv_cache": f.kv, "needed": f.needed, "runs": f.where}
                          for f in fits], indent=2))  # fmt: skip
        return
    words = {ON_GPU: "fully on the GPU", PART_GPU: "partly on the GPU", ON_CPU: "on the CPU"}
    rows = [
        (f.quant or "-", ", ".join(f.files), human_size(f.weights), human_size(f.needed),
         words.get(f.where, "does not fit"))
        for f in fits
    ]  # fmt: skip
    print(f"{repo.repo}: here, {here.describe()}")
    print(table(("QUANT", "FILE", "SIZE", "NEEDS", "RUNS HERE"), rows))


def _template_row(template: bool, capabilities: tuple[str, ...]) -> str:
    """Whether the model has a chat template, and what it is without one."""
    if template:
        return "yes"
    if "rerank" in capabilities:
        return "no (reranker)"
    return "no (embedding model)" if "embedding" in capabilities else "no (completion mode)"
