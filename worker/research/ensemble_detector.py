"""Put trained perturbation detectors together into one that averages their logits.

    python -m worker.research.ensemble_detector --member models/pgd-at-preact18-w0.25/perturbation-detector \
        --member runs/cand-w32/robust/perturbation-detector --out runs/ensemble/robust/perturbation-detector

The members must be ``perturbation-pair`` detectors trained for the same robust and standard bundles (the
engine checks the calibration against the detector's version, and the detector against the pair).  The result
is an ordinary detector bundle (``perturbation-pair-ensemble``, ``training.models.detector_ensemble``) that
the engine, ``worker.research.calibrate`` and ``worker.research.evaluate`` take like any other; it records each member's
version, command and held-out metrics.  Nothing is trained: calibrate the ensemble before serving it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training import bundle as bundle_io
from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.models import ENSEMBLE_ARCHITECTURE, build_model
from worker.research import delivery
from worker.research.pools import SEEN_POOL

MEMBER_ARCH = "perturbation-pair"
SHARED_FIELDS = ("num_classes", "classes", "input_size", "tile", "mean", "std", "method", "dataset", "for_bundles")


class EnsembleError(ValueError):
    """The members cannot be averaged into one detector."""


def check_members(members: Sequence[Bundle]) -> None:
    """Raise ``EnsembleError`` unless the members are pair detectors for the same bundles and inputs."""
    if len(members) < 2:
        raise EnsembleError("an ensemble needs at least two member detectors")
    first = members[0]
    for member in members:
        if member.metadata["arch"] != MEMBER_ARCH:
            raise EnsembleError(f"{member.path} is a {member.metadata['arch']} detector, not {MEMBER_ARCH}")
        # a member drawn from the calibration pool would leave its own training images in the calibration
        if (member.metadata.get("training") or {}).get("pool_kind") != SEEN_POOL:
            raise EnsembleError(f"{member.path} was not drawn from the models' own training images ({SEEN_POOL})")
        for field in SHARED_FIELDS:
            if member.metadata.get(field) != first.metadata.get(field):
                raise EnsembleError(
                    f"{member.path} and {first.path} differ in {field}: "
                    f"{member.metadata.get(field)!r} against {first.metadata.get(field)!r}"
                )


def ensemble_metadata(members: Sequence[Bundle], command: str) -> dict[str, Any]:
    first = members[0].metadata
    records = [member.metadata["training"] for member in members]
    sources = {s["version"]: s for record in records for s in record.get("attack_sources") or []}
    # detectors trained before --deliveries existed record none: they used every delivery
    every = ", ".join(delivery.DELIVERIES)
    deliveries = dict.fromkeys(d.strip() for record in records for d in record.get("deliveries", every).split(","))
    return {
        **{field: first[field] for field in SHARED_FIELDS},
        "arch": ENSEMBLE_ARCHITECTURE,
        "width": [member.metadata["width"] for member in members],
        "data_source": first.get("data_source"),
        "command": command,
        "training": {
            "kind": "ensemble",
            "pool_kind": SEEN_POOL,
            "deliveries": ", ".join(deliveries),
            "attack_sources": list(sources.values()),
        },
        "members": [
            {
                "version": member.version,
                "width": member.metadata["width"],
                "command": member.metadata.get("command"),
                "metrics": member.metadata.get("metrics"),
                "training": member.metadata["training"],
            }
            for member in members
        ],
    }


def build_ensemble(members: Sequence[Bundle], out: str | Path, command: str) -> Bundle:
    """Write the ensemble of ``members`` as a bundle in ``out`` and return it loaded (and so verified)."""
    check_members(members)
    metadata = ensemble_metadata(members, command)
    model = build_model(ENSEMBLE_ARCHITECTURE, metadata["num_classes"], metadata["mean"], metadata["std"],
                        metadata["width"])  # fmt: skip
    for slot, member in zip(model.net.members, members, strict=True):
        slot.load_state_dict(member.model.net.state_dict())
    bundle_io.save(model, metadata, out)
    return load_bundle(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--member", action="append", required=True, help="a detector bundle (give two or more)")
    parser.add_argument("--out", required=True, help="the ensemble bundle's folder")
    args = parser.parse_args(argv)
    arguments = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "worker.research.ensemble_detector", *arguments])
    try:
        members = [load_bundle(path) for path in args.member]
        ensemble = build_ensemble(members, args.out, command)
    except (EnsembleError, bundle_io.BundleError) as err:
        parser.exit(2, f"ensemble_detector: {err}\n")
    print(f"{ensemble.path}: {ENSEMBLE_ARCHITECTURE} {ensemble.version} of {', '.join(m.version for m in members)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
