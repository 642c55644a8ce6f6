"""``scanner demo``: the whole product on one machine, offline.

``run_crawl_demo`` (the default) builds a local site whose pages hold CIFAR-10 test images, half of them
perturbed by PGD against the bundled *standard* model, serves it on loopback, crawls it with Chromium in
embedded mode and scores the verdicts against the truth.  ``run_demo`` (``--models-only``) shows the robust
model beside its standard companion on the same kind of images, without the crawl.

The model code (torch, ``training``) is imported when the demo runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scanner import terminal
from scanner.cli.crawl import print_report, submitter_for
from scanner.helpformat import HelpFormatter
from scanner.settings import BUNDLED_ROBUST, BUNDLED_STANDARD, REPO_ROOT

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def add_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="crawl a local demo site whose images are partly attacked, end to end",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 ImageFolder tarball or tree")
    demo.add_argument("--robust", type=Path, default=BUNDLED_ROBUST, help="the robust model bundle that judges")
    demo.add_argument(
        "--standard", type=Path, default=BUNDLED_STANDARD, help="the standard model bundle the attacks target"
    )
    demo.add_argument("--pages", type=int, default=4, help="gallery pages on the demo site")
    demo.add_argument("--per-page", type=int, default=5, help="images per page")
    demo.add_argument("--eps", default="8/255", help="L-inf size of the PGD attacks, in pixel units")
    demo.add_argument("--photos", type=int, default=6, help="ordinary photos on the site, half of them attacked")
    demo.add_argument("--seed", type=int, default=0, help="which test images are drawn and attacked")
    demo.add_argument("--models-only", action="store_true", help="only compare the two models, without a crawl")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's database (its folder is printed), to look at it with `scanner serve` and the dashboard",
    )


def run(args: argparse.Namespace) -> int:
    from training.bundle import BundleError
    from training.data import DataError

    if not args.data.exists():
        print(f"error: demo images not found at {args.data}; pass --data (see shared/data/README.md)", file=sys.stderr)
        return 2
    try:
        if args.models_only:
            run_demo(args.data, args.robust, args.standard, args.pages * args.per_page, args.eps, args.seed)
            return 0
        return run_crawl_demo(args)
    except (BundleError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_demo(data: Path, robust_dir: Path, standard_dir: Path, n: int, eps_text: str, seed: int) -> dict[str, float]:
    import torch

    from training.attacks import parse_eps, pgd, predict
    from training.bundle import load
    from training.data import load_splits, seeded_subset, to_float

    console = terminal.console()
    robust, standard = load(robust_dir), load(standard_dir)
    console.print(f"robust model   {robust.metadata['method']} {robust.metadata['arch']} v{robust.version}")
    console.print(f"standard model {standard.metadata['method']} {standard.metadata['arch']} v{standard.version}")
    test = seeded_subset(load_splits("cifar10", data).test, n, seed)
    x, y = to_float(test.images), test.labels
    torch.manual_seed(seed)
    attacked = torch.arange(n) % 2 == 1
    eps = parse_eps(eps_text)
    x[attacked] = pgd(standard.model, x[attacked], y[attacked], eps, 2 / 255, 20)
    standard_pred, robust_pred = predict(standard.model, x), predict(robust.model, x)

    classes = robust.classes
    table = Table(
        title=f"{n} test images, every second one perturbed by PGD-20 at eps {eps_text} against the standard model"
    )
    for column in ("#", "true", "perturbed", "standard model", "robust model"):
        table.add_column(column)
    for i in range(n):

        def cell(pred: torch.Tensor, i: int = i) -> str:
            name = classes[int(pred[i])]
            return f"[green]{name}[/]" if pred[i] == y[i] else f"[red]{name}[/]"

        table.add_row(str(i), classes[int(y[i])], "yes" if attacked[i] else "", cell(standard_pred), cell(robust_pred))
    console.print(table)
    summary = {
        "standard_clean": (standard_pred == y)[~attacked].float().mean().item(),
        "standard_attacked": (standard_pred == y)[attacked].float().mean().item(),
        "robust_clean": (robust_pred == y)[~attacked].float().mean().item(),
        "robust_attacked": (robust_pred == y)[attacked].float().mean().item(),
    }
    console.print(
        f"standard model: {100 * summary['standard_clean']:.0f}% right on clean, "
        f"{100 * summary['standard_attacked']:.0f}% on perturbed images\n"
        f"robust model:   {100 * summary['robust_clean']:.0f}% right on clean, "
        f"{100 * summary['robust_attacked']:.0f}% on perturbed images"
    )
    return summary


def _photos(args: Any, console: Console) -> list[tuple[bytes, bool]]:
    """Ordinary photos for the demo site, from the web-image set (a small one is built on first use)."""
    if args.photos == 0:
        return []
    from scanner.demo_site import demo_photos
    from worker.research import web_images

    folder = web_images.DEFAULT_DIR
    if not (folder / "BUILT").is_file():
        folder = folder.with_name("web-images-demo")
        console.print(f"building a small set of web photos from Debian packages in {folder} (once) ...")
        web_images.build(folder, limit=1, progress=False)
    photos = demo_photos(folder, args.standard, args.photos, args.eps, args.seed)
    # The count placed, not the one asked for: the web-image set may hold fewer suitable photos.
    fewer = f" (of {args.photos} asked: the web-image set has no more)" if len(photos) < args.photos else ""
    console.print(f"adding {len(photos)} ordinary photos{fewer}, every second one attacked through the resize ...")
    return photos


def run_crawl_demo(args: Any) -> int:
    """``scanner demo``: build the demo site, serve it on loopback, crawl it in embedded mode, and score the
    verdicts against the site's ground truth.  Everything lives in a temporary folder; nothing leaves the
    machine."""
    import asyncio
    import tempfile

    from scanner.demo_site import build_demo_site
    from scanner.settings import Settings
    from training.bundle import load

    console = terminal.console()
    load(args.robust), load(args.standard)  # a missing or broken bundle is reported before any work
    with tempfile.TemporaryDirectory(prefix="scanner-demo-") as tmp:
        root = Path(tempfile.mkdtemp(prefix="scanner-demo-")) if args.keep else Path(tmp)
        console.print(
            f"building the demo site: {args.pages} pages x {args.per_page} CIFAR-10 test images, every "
            f"second one attacked (PGD-20, eps {args.eps}) against the standard model ..."
        )
        photos = _photos(args, console)
        images = build_demo_site(
            root / "site", args.data, args.standard, args.pages, args.per_page, args.eps, args.seed, photos
        )
        settings = Settings(
            data_dir=root / "data",
            robust_bundle=args.robust,
            standard_bundle=args.standard,
            broker_url=None,
            database_url=None,
        )
        outcome = asyncio.run(_serve_and_crawl(root / "site", settings, console))
    print_report(outcome, console)
    _score_against_truth(images, outcome, console)
    if args.keep:
        data_dir = root / "data"
        console.print(
            f"kept the demo's database in {data_dir}: to see it in the dashboard, run "
            f"SCANNER_DATA_DIR={data_dir} SCANNER_ROBUST_BUNDLE={args.robust} scanner serve",
            soft_wrap=True,
        )
    return 0


async def _serve_and_crawl(site_dir: Path, settings: Any, console: Console) -> Any:
    from aiohttp import web

    from scanner.crawl import CrawlConfig
    from scanner.crawl.progress import crawl_progress
    from scanner.crawl.scan import crawl_and_scan

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(site_dir / "index.html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_static("/", site_dir)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        console.print(f"demo site on {url}; crawling it with Chromium, analysis in-process (embedded mode)")
        config = CrawlConfig(start_url=url, max_pages=50, concurrency=2, state_path=settings.data_dir / "crawl.sqlite")
        async with submitter_for(settings, None, None) as submitter:
            outcome = await crawl_and_scan(config, submitter, progress=crawl_progress(console))
            outcome.mode = "embedded"
            return outcome
    finally:
        await runner.cleanup()


def _score_against_truth(images: list[Any], outcome: Any, console: Console) -> None:
    from scanner.demo_site import PHOTO_LABEL

    by_file = {}
    for found in outcome.images.values():
        if found.url:
            by_file[found.url.rsplit("/", 2)[-2] + "/" + found.url.rsplit("/", 1)[-1]] = found
    table = Table(title="what the crawl found, against the demo site's ground truth")
    for column in ("image", "page", "placed as", "true label", "attacked", "robust model", "score", "flagged"):
        table.add_column(column)
    counts = {"found": 0, "attacked_flagged": 0, "clean_flagged": 0, "robust_right": 0, "photos_unlabelled": 0}
    for image in images:
        found = by_file.get(image.file)
        counts["found"] += found is not None
        label, score, flagged = (found.label, found.score, found.flagged) if found else (None, None, None)
        photo = image.label == PHOTO_LABEL
        right = (label is None and found is not None) if photo else label == image.label
        counts["photos_unlabelled" if photo else "robust_right"] += right
        counts["attacked_flagged" if image.perturbed else "clean_flagged"] += bool(flagged)
        shown = label or ("no confident class" if found is not None else "not found")
        table.add_row(
            image.file,
            image.page,
            image.placement,
            image.label,
            "yes" if image.perturbed else "",
            f"[{'green' if right else 'red'}]{shown}[/]",
            "" if score is None else f"{score:.2f}",
            "[red]FLAGGED[/]" if flagged else "",
        )
    console.print(table)
    attacked = sum(image.perturbed for image in images)
    photos = sum(image.label == PHOTO_LABEL for image in images)
    console.print(
        f"found {counts['found']}/{len(images)} images (img, srcset, CSS background, lazy-loaded, inserted by "
        f"JavaScript); flagged {counts['attacked_flagged']}/{attacked} attacked and "
        f"{counts['clean_flagged']}/{len(images) - attacked} clean images; the robust model named "
        f"{counts['robust_right']}/{len(images) - photos} CIFAR-10 images correctly"
        + (f" and gave no class name to {counts['photos_unlabelled']}/{photos} photos" if photos else "")
        + ".\nThe shipped models are small CPU-trained ones (see results/README.md): the robust model is often "
        "wrong, the detector's threshold is set so that ordinary photos are not flagged and it misses part of the "
        "attacks there, and an attacker who targets the detector evades it."
    )
