"""The one error hierarchy: every error knows how it ends a command and an HTTP request."""

from __future__ import annotations

import importlib
import pkgutil

import localrun
from localrun import errors


def _all_subclasses(cls: type[errors.LocalrunError]) -> set[type[errors.LocalrunError]]:
    found: set[type[errors.LocalrunError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_error_lives_in_errors_and_chooses_its_http_status() -> None:
    # Import every module, so that an error class defined anywhere would be seen here.
    for info in pkgutil.walk_packages(localrun.__path__, "localrun."):
        if info.name != "localrun.__main__":
            importlib.import_module(info.name)
    classes = _all_subclasses(errors.LocalrunError)
    assert len(classes) > 15
    for cls in classes:
        assert cls.__module__ == "localrun.errors", cls  # one hierarchy, in one module
        assert 400 <= cls.http_status < 600, cls
        assert cls.exit_code in (1, 2), cls


def test_usage_errors_are_exit_2_and_http_400() -> None:
    assert (errors.UsageError.exit_code, errors.UsageError.http_status) == (2, 400)
    assert errors.PromptTooLongError.http_status == 400
    assert errors.ModelNotFoundError.http_status == errors.NeedsPullError.http_status == 404
    assert errors.OutOfMemoryError.http_status == 507
    assert errors.LocalrunError("x").exit_code == 1


def test_needs_pull_names_what_to_pull() -> None:
    e = errors.NeedsPullError("hf.co/org/repo:Q4_K_M", "my-model")
    assert e.message == "model 'my-model' is not pulled"
    assert e.hint == "pull it with: localrun pull hf.co/org/repo:Q4_K_M"
    assert e.ref == "hf.co/org/repo:Q4_K_M"
