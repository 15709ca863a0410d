"""``localrun pull REF...``: download models from the Hugging Face Hub or an Ollama-style
registry; ``pull --all`` brings every pulled model up to date."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

import typer

from localrun.cli import app
from localrun.cli.progress import reporter
from localrun.files import human_size


@app.command()
def pull(
    refs: list[str] = typer.Argument(
        None,
        help="hf.co/ORG/REPO[:QUANT][@REVISION], hf.co/ORG/REPO/FILE.gguf, a library name, or "
        "a registry name: ollama.com/library/MODEL[:TAG], or MODEL[:TAG] not in the library.",
        show_default=False,
    ),
    force: bool = typer.Option(
        False, "--force", help="Pull even if the model cannot fit in this machine's memory."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per model."),
    quant: str | None = typer.Option(
        None,
        "--quant",
        metavar="QUANT",
        help="The quantization to pull (as REF:QUANT); 'auto': the largest that fits here.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Only say what would be pulled, and where it would run."
    ),
    all_: bool = typer.Option(
        False, "--all", help="Bring every pulled model up to date with its source."
    ),
) -> None:
    """Download models from the Hugging Face Hub or an Ollama-style registry.

    Every file is checked against its sha256; interrupted pulls resume. REPO:auto (or
    --quant auto) picks the largest quantization that fits this machine's GPU, else its memory.
    Registry names go to LOCALRUN_REGISTRY (default https://registry.ollama.ai).
    """
    from localrun.errors import UsageError
    from localrun.hub.pull import pull as pull_model
    from localrun.models.packaged import packaged_with
    from localrun.models.resolve import hub_ref_for
    from localrun.models.updates import registry_target

    if all_ or not refs:
        if not all_ or refs or quant or dry_run:
            raise UsageError("name the models to pull, or pull --all alone",
                             "localrun pull NAME..., or: localrun pull --all")  # fmt: skip
        _pull_all(as_json)
        return
    for ref in refs:
        if (package := packaged_with(ref)) is not None:
            print(f"{ref}: comes with the Python package {package}, nothing to pull",
                  file=sys.stderr)  # fmt: skip
            continue
        if (target := registry_target(ref)) is not None:
            if quant or dry_run:
                raise UsageError(
                    f"--quant and --dry-run are for Hub repositories, not '{ref}'",
                    "a registry model's tag names its quantization: NAME:TAG",
                )
            _pull_registry(*target, force, as_json)
            continue
        text = _with_quant(hub_ref_for(ref), quant)
        if dry_run or text.upper().rsplit("@", 1)[0].endswith(":AUTO"):
            chosen = _chosen(text, dry_run, as_json)
            if chosen is None:
                continue
            text = chosen
        result = pull_model(text, force=force, reporter=reporter())
        m = result.manifest
        projector = m.projector.path if m.projector is not None else None
        facts = {"path": str(m.model_path), "quant": m.quant, "projector": projector}
        _said(m.name, m.size, result, facts, as_json, m.quant or m.files[0].path, "sha256 verified")


class _Pulled(Protocol):
    """What a pull of either kind (the Hub's, a registry's) reports."""

    @property
    def up_to_date(self) -> bool: ...
    @property
    def downloaded_bytes(self) -> int: ...
    @property
    def resumed_bytes(self) -> int: ...
    @property
    def transfer_seconds(self) -> float: ...
    @property
    def seconds(self) -> float: ...


def _said(
    name: str,
    size: int,
    result: _Pulled,
    facts: Mapping[str, object],
    as_json: bool,
    version: str,
    verified: str,
) -> None:
    """A pull's outcome: a JSON line with ``--json`` (``facts`` in it), and a line on stderr
    that names the ``version`` kept, or the transfer and how it was ``verified``."""
    if as_json:
        record = {
            "name": name,
            **facts,
            "size": size,
            "up_to_date": result.up_to_date,
            "downloaded_bytes": result.downloaded_bytes,
            "resumed_bytes": result.resumed_bytes,
            "transfer_s": result.transfer_seconds,
            "total_s": result.seconds,
        }
        print(json.dumps(record))
    if result.up_to_date:
        print(f"{name}: up to date ({version})", file=sys.stderr)
        return
    seconds = result.transfer_seconds
    rate = result.downloaded_bytes / seconds / 1e6 if seconds else 0.0
    resumed = f", resumed after {human_size(result.resumed_bytes)}" if result.resumed_bytes else ""
    print(
        f"{name}: pulled {human_size(size)} in {result.seconds:.1f} s "
        f"(transfer {rate:.0f} MB/s{resumed}), {verified}",
        file=sys.stderr,
    )


def _with_quant(text: str, quant: str | None) -> str:
    """``text`` with ``--quant`` put in as its ``:QUANT`` (refused where it names one already)."""
    if quant is None:
        return text
    from localrun.errors import UsageError
    from localrun.hub.refs import is_hub_ref, parse_hub_ref

    if not is_hub_ref(text):
        raise UsageError(f"--quant is for Hub repositories, not '{text}'", "pull hf.co/ORG/REPO")
    ref = parse_hub_ref(text)
    if ref.quant or ref.filename:
        raise UsageError(f"'{text}' names its file already", "drop --quant, or the :QUANT")
    return replace(ref, quant=quant.upper()).name


def _chosen(text: str, dry_run: bool, as_json: bool) -> str | None:
    """The reference to pull for ``text`` (its ``:auto`` decided here); None on a dry run,
    which only says what it would pull and where it would run."""
    from localrun.engine.fit import pick, survey
    from localrun.hub.refs import parse_hub_ref

    asked = parse_hub_ref(text)
    auto = asked.quant == "AUTO"
    ref, fits, here = survey(replace(asked, quant=None).name if auto else text)
    if auto:
        chosen, why = pick(ref, fits, here)
        print(f"auto: {why}", file=sys.stderr)
        text = replace(ref, quant=chosen.quant).name if chosen.quant else (
            replace(ref, filename=chosen.files[0]).name
        )  # fmt: skip
    else:
        from localrun.hub.refs import choose

        wanted, _ = choose(ref, [f for fit in fits for f in fit.files])  # or it says why not
        chosen = next(f for f in fits if f.files == wanted.files)
    if not dry_run:
        return text
    if as_json:
        print(json.dumps({"name": text, "files": list(chosen.files), "size": chosen.weights,
                          "needed": chosen.needed, "runs": chosen.where}))  # fmt: skip
    print(
        f"would pull {text}: {human_size(chosen.weights)}, {human_size(chosen.needed)} with "
        f"its KV cache and compute; here it would run: {chosen.where}",
        file=sys.stderr,
    )
    return None


def _pull_registry(text: str, name: str, force: bool, as_json: bool) -> None:
    """Pull a registry model, and say what came."""
    from localrun.models.updates import pull_from_registry

    result = pull_from_registry(text, name, reporter(), force=force)
    digest = result.manifest.digest
    facts = {"registry": result.manifest.name.full, "digest": digest}
    manifest = f"manifest {digest[:19]}"
    _said(name, result.manifest.size, result, facts, as_json, manifest,
          f"every layer's sha256 verified ({manifest})")  # fmt: skip


def _pull_all(as_json: bool) -> None:
    """Pull every model that came from the Hub or a registry again; say what changed."""
    from localrun.errors import LocalrunError
    from localrun.models.updates import sources, update

    found = sources()
    if not found:
        print("no pulled models to update", file=sys.stderr)
        return
    failed = 0
    for source in found:
        done = update(source, reporter())
        failed += done.problem is not None
        if as_json:
            print(json.dumps({"name": source.name, "updated": done.updated,
                              "problem": done.problem}))  # fmt: skip
        what = (f"not updated: {done.problem}" if done.problem else
                "updated" if done.updated else "up to date")  # fmt: skip
        print(f"{source.name}: {what}", file=sys.stderr)
    if failed:
        raise LocalrunError(f"{failed} of {len(found)} models could not be updated",
                            "see the lines above; pull again to retry them")  # fmt: skip
