"""Database writes only tests make: an image recorded without a scan, an item for an image row the test holds, one
verdict written directly (the service records images through ``queries.add_items`` and verdicts in batches)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scanner.db.models import Image, ImageBlob, Scan, ScanItem, utcnow
from scanner.db.queries import NewItem, add_items, insert_ignoring_duplicates, write_verdicts


def record_image(session: Session, sha256: str, data: bytes, fmt: str, width: int, height: int) -> Image:
    """The image row for these bytes, created with its blob on first sight; ``last_seen`` moves on."""
    now = utcnow()
    insert_ignoring_duplicates(
        session,
        Image,
        {
            "sha256": sha256,
            "format": fmt,
            "byte_size": len(data),
            "width": width,
            "height": height,
            "first_seen": now,
            "last_seen": now,
            "attempts": 0,
        },
        ["sha256"],
    )
    image = session.scalars(select(Image).where(Image.sha256 == sha256)).one()
    image.last_seen = now
    insert_ignoring_duplicates(session, ImageBlob, {"image_id": image.id, "data": data}, ["image_id"])
    return image


def add_item(
    session: Session,
    scan: Scan,
    position: int,
    *,
    image: Image | None = None,
    image_url: str | None = None,
    filename: str | None = None,
    error: tuple[str, str] | None = None,
) -> ScanItem:
    """One image of a scan (``add_items`` for one), for callers that already hold the image row."""
    item = NewItem(
        image.sha256 if image else None, b"" if image else None, image_url=image_url, filename=filename, error=error
    )
    if image is not None:
        item.format, item.width, item.height = image.format, image.width, image.height
    add_items(session, scan, [item], first_position=position)
    return session.scalars(select(ScanItem).where(ScanItem.scan_id == scan.id, ScanItem.position == position)).one()


def write_verdict(session: Session, image_id: int, verdict: dict[str, Any]) -> None:
    write_verdicts(session, {image_id: verdict})
