"""What changed between two runs of an audit.  Images are compared by where they are (their URL; ``data:`` and
URL-less images by their bytes), so an image replaced in place shows as a changed verdict at that URL, not as
an unrelated removal and addition.

- ``newly_flagged``: flagged now, and not flagged (or absent) in the previous run;
- ``gone``: present in the previous run, absent now;
- ``changed``: present in both, with a different verdict (the flag flipped or the label changed);
- ``added``: absent in the previous run (for the record; the first run has everything added).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Seen:
    """One image of a run's snapshot."""

    sha256: str
    url: str | None
    flagged: bool | None
    label: str | None
    score: float | None

    @property
    def key(self) -> str:
        return self.url if self.url and not self.url.startswith("data:") else f"sha256:{self.sha256}"


def compare(previous: list[Seen] | None, current: list[Seen], previous_run: int | None = None) -> dict[str, Any]:
    """The diff document stored on the run and sent to webhooks."""
    before = {seen.key: seen for seen in previous or []}
    now = {seen.key: seen for seen in current}
    changed = [
        {"key": key, "before": asdict(before[key]), "after": asdict(seen)}
        for key, seen in now.items()
        if key in before and _verdict(before[key]) != _verdict(seen)
    ]
    return {
        "previous_run": previous_run,
        "newly_flagged": [asdict(s) for k, s in now.items() if s.flagged and not (k in before and before[k].flagged)],
        "gone": [asdict(seen) for key, seen in before.items() if key not in now],
        "changed": changed,
        "added": [asdict(seen) for key, seen in now.items() if key not in before],
    }


def _verdict(seen: Seen) -> tuple[bool, str | None]:
    return bool(seen.flagged), seen.label
