"""``localrun pull REF...``: download models from the Hugging Face Hub."""

from __future__ import annotations

import json
import sys

import typer

from localrun.cli import app
from localrun.cli.progress import reporter
from localrun.files import human_size


@app.command()
def pull(
    refs: list[str] = typer.Argument(
        ...,
        help="hf.co/ORG/REPO[:QUANT][@REVISION], hf.co/ORG/REPO/FILE.gguf, or a library name.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Pull even if the model cannot fit in this machine's memory."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per model."),
) -> None:
    """Download models from the Hugging Face Hub.

    Every file is checked against the Hub's sha256; interrupted pulls resume.
    """
    from localrun.hub.pull import pull as pull_model
    from localrun.models.resolve import hub_ref_for

    for ref in refs:
        result = pull_model(hub_ref_for(ref), force=force, reporter=reporter())
        m = result.manifest
        if as_json:
            record = {
                "name": m.name,
                "path": str(m.model_path),
                "size": m.size,
                "quant": m.quant,
                "up_to_date": result.up_to_date,
                "downloaded_bytes": result.downloaded_bytes,
                "resumed_bytes": result.resumed_bytes,
                "transfer_s": result.transfer_seconds,
                "total_s": result.seconds,
            }
            print(json.dumps(record))
        if result.up_to_date:
            print(f"{m.name}: up to date ({m.quant or m.files[0].path})", file=sys.stderr)
            continue
        seconds = result.transfer_seconds
        rate = result.downloaded_bytes / seconds / 1e6 if seconds else 0.0
        resumed = (
            f", resumed after {human_size(result.resumed_bytes)}" if result.resumed_bytes else ""
        )
        print(
            f"{m.name}: pulled {human_size(m.size)} in {result.seconds:.1f} s "
            f"(transfer {rate:.0f} MB/s{resumed}), sha256 verified",
            file=sys.stderr,
        )
