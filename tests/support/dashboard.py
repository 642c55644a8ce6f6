"""The dashboard as its tests see it: the seeded API (tokens per tenant, the images and what the page must show
for each) and the steps a person takes on the page (sign in, read the table's rows)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from tests.support.api import RunningApi

T0 = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)  # the seeded images are seen one day apart from here


@dataclass
class Seeded:
    """One seeded image: what the dashboard must show for it."""

    sha256: str
    data: bytes
    label: str | None
    score: float
    site: str
    page_url: str
    flagged: bool
    image_url: str = ""


@dataclass
class DashboardApi:
    api: RunningApi
    tokens: dict[str, str]
    images: dict[str, list[Seeded]] = field(default_factory=dict)
    run_flagged: list[int] = field(default_factory=list)

    def flagged(self, tenant: str) -> list[Seeded]:
        """The tenant's flagged images, newest sighting first (as the report orders them)."""
        return [image for image in reversed(self.images[tenant]) if image.flagged]


def sign_in(page, dashboard_api: DashboardApi, tenant: str = "acme", page_size: int | None = None) -> None:  # noqa: ANN001
    page.goto(f"{dashboard_api.api.base}/dashboard")
    if page_size is not None:
        page.evaluate("size => { document.body.dataset.pageSize = String(size); }", page_size)
    page.get_by_label("API key").fill(dashboard_api.tokens[tenant])
    page.get_by_role("button", name="Sign in").click()
    page.locator("#status").filter(has_text="shown").wait_for()


def table_shas(page) -> list[str]:  # noqa: ANN001
    return page.locator("#rows tr").evaluate_all("rows => rows.map(row => row.dataset.sha256)")
