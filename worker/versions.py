"""The version a served model pair carries in every verdict, in one place: the engine reports it and the service
(``scanner.versions``) states it from the bundles' JSON alone.  A module of its own because importing anything of
``worker.engine`` loads torch, which ``scanner report`` and the API's start-up do without."""

from __future__ import annotations


def pair_version(robust_version: str, standard_version: str) -> str:
    """``<robust bundle version>+<standard bundle version>``."""
    return f"{robust_version}+{standard_version}"
