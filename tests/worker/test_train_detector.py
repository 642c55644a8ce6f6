"""The perturbation detector: what it trains on, that it learns to see a perturbation, how the engine serves
it, and that calibration never sets a threshold on images it trained on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from tests.support.models import make_source_bundle, make_source_model
from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.models import build_model
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine import native
from worker.engine.engine import Engine, EngineError, default_detector_dir
from worker.research import calibrate, cifar_attacks, pools, train_detector
from worker.research.cifar_evaluation import detector_source_families
from worker.research.terminal import make_progress


def _two_model_bundles() -> list[Bundle]:
    """Two bundles (no weights) whose training records say which of 300 training images they trained on."""
    record = {"training": {"seed": 3, "train_images": 50}, "command": "python -m training train --holdout 20"}
    other = {**record, "training": {"seed": 4, "train_images": 60}}
    return [Bundle(None, record, Path("r")), Bundle(None, other, Path("s"))]


def test_calibration_pool_leaves_out_exactly_the_detectors_images():
    n, models = 300, _two_model_bundles()
    model_pool, _ = pools.unseen_pool(n, models)
    detector = Bundle(None, {"training": {"seed": 9, "pool_images": 70}}, Path("d"))
    pool, note = pools.unseen_pool(n, models, detector)
    trained_on = set(pools.detector_images(model_pool, 9, 70).tolist())
    assert len(trained_on) == 70 and trained_on <= set(model_pool.tolist())
    assert set(pool.tolist()) == set(model_pool.tolist()) - trained_on
    assert "perturbation detector" in note
    with pytest.raises(ValueError, match="records no training images"):
        pools.unseen_pool(n, models, Bundle(None, {}, Path("d")))


def test_a_detector_drawn_from_the_models_training_images_leaves_the_whole_unseen_pool_to_calibration():
    n, models = 300, _two_model_bundles()
    unseen, _ = pools.unseen_pool(n, models)
    seen, note = pools.seen_pool(n, models)
    assert set(seen.tolist()) | set(unseen.tolist()) == set(range(n)) and not set(seen.tolist()) & set(unseen.tolist())
    assert 60 <= len(seen) <= 110 and "trained on" in note
    detector = Bundle(None, {"training": {"seed": 9, "pool_images": 40, "pool_kind": pools.SEEN_POOL}}, Path("d"))
    kept, note = pools.unseen_pool(n, models, detector)
    assert torch.equal(kept, unseen) and "saw" in note


def test_every_example_goes_through_a_delivery_and_attacks_label_only_the_views_that_show_them():
    """Clean, benign and attacked CIFAR-sized images each give a model input; a large web image gives tiles
    too, and its native-resolution attack labels only the tiles (its model input is not a positive)."""
    import random

    import numpy as np
    from PIL import Image

    from worker.research import detector_data

    examples = detector_data.DetectorExamples()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    usable = torch.tensor([1, 1, 0, 1]).bool()
    detector_data.cifar_examples(examples, x, x.flip(3), ["pgd-8-s"] * 4, usable, 0, [3, 8, 8])
    tags = examples.model_inputs.tags
    assert len(tags) == 4 * 2 + 3 and examples.tiles.images == []  # 32 px: no tiles
    hard = detector_data.DetectorExamples()
    detector_data.cifar_examples(hard, x, x.flip(3), ["pgd-8-s"] * 4, usable, 0, [3, 8, 8], hard_negatives=True)
    # with hard negatives every image also gives a noisy copy, besides its randomly chosen benign change
    noisy = [t for t in hard.model_inputs.tags if t.startswith(f"cifar|benign:{detector_data.HARD_NEGATIVE}|")]
    assert len(hard.model_inputs.tags) == 4 * 3 + 3 and len(noisy) >= 4
    assert all("|" in tag for tag in tags)  # every example records its delivery
    assert examples.model_inputs.labels.count(1) == 3
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (160, 200, 3), dtype=np.uint8))
    web = detector_data.DetectorExamples()
    detector_data.add_image(web, big, 1, "web|native-pgd-8", random.Random(0), [3, 8, 8], model_view_label=None)
    assert web.model_inputs.images == [] and set(web.tiles.labels) == {1} and len(web.tiles.images) <= 2
    assert web.tiles.images[0].shape[1:] == (64, 64) or web.tiles.images[0].shape[1:] == (48, 48)


def test_examples_restricted_to_lossless_deliveries_never_pass_through_a_lossy_one():
    """``--deliveries png,downscale0.75``: every example's recorded delivery is one of those two, both occur,
    and the default still draws from all of them (the same draws as before the option existed)."""
    from worker.research import detector_data

    x = torch.rand(60, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    usable = torch.ones(60, dtype=torch.bool)

    def deliveries_used(examples: detector_data.DetectorExamples) -> set[str]:
        detector_data.cifar_examples(examples, x, x.flip(3), ["pgd-8-s"] * 60, usable, 0, [3, 8, 8])
        return {tag.rsplit("|", 1)[1] for tag in examples.model_inputs.tags}

    lossless = ("png", "downscale0.75")
    assert deliveries_used(detector_data.DetectorExamples(deliveries=lossless)) == set(lossless)
    assert len(deliveries_used(detector_data.DetectorExamples()) - set(lossless)) >= 4  # JPEG and WebP ones too
    args = train_detector.parse_args(
        ["--robust", "r", "--standard", "s", "--data-dir", "d", "--deliveries", "png, downscale0.75"]
    )
    assert args.deliveries == lossless
    with pytest.raises(SystemExit):
        train_detector.parse_args(["--robust", "r", "--standard", "s", "--data-dir", "d", "--deliveries", "gif"])


def test_a_thumbnail_negative_is_read_through_the_model_input_alone():
    """``--web-hard-negatives thumbnail``: each web image gives one clean 24-63 px copy, a model-input example
    with no tiles (it is smaller than a tile), labelled clean."""
    import numpy as np
    from PIL import Image
    from torch import nn

    from worker.research import detector_data

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (240, 256, 3), dtype=np.uint8)) for _ in range(4)]
    examples = detector_data.DetectorExamples()
    detector_data.natural_examples(
        examples, images, [model], [3, 32, 32], seed=0, device=torch.device("cpu"), attack_n=0,
        extra_negatives=("thumbnail",),
    )  # fmt: skip
    thumbnails = [i for i, t in enumerate(examples.model_inputs.tags) if t.startswith("web|benign:thumbnail|")]
    assert len(thumbnails) == 4 and {examples.model_inputs.labels[i] for i in thumbnails} == {0}
    assert not any(t.startswith("web|benign:thumbnail|") for t in examples.tiles.tags)
    args = train_detector.parse_args(
        ["--robust", "r", "--standard", "s", "--data-dir", "d", "--web-hard-negatives", "thumbnail,brightness"]
    )
    assert args.web_hard_negatives == ("thumbnail", "brightness")


def test_spread_picks_evenly_spaced_distinct_indices():
    from worker.research.detector_data import spread

    for n in range(0, 30):
        for k in range(0, n + 3):
            chosen = spread(n, k)
            assert len(chosen) == min(k, n) and all(0 <= i < n for i in chosen)
            if 0 < k <= n:  # no gap between chosen indices is more than one step wider than n / k
                gaps = [b - a for a, b in zip(sorted(chosen), [*sorted(chosen)[1:], n + min(chosen)], strict=True)]
                assert max(gaps) - min(gaps) <= 1


def test_web_examples_attack_only_the_budgeted_images_and_keep_clean_and_benign_for_all():
    """With an attack budget of 2 of 5 web images, 2 are attacked (round-robin over the attacks), and every
    image still gives clean and benign examples."""
    import numpy as np
    from PIL import Image
    from torch import nn

    from worker.research import detector_data

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    rng = np.random.default_rng(2)
    # 240 px: even the smallest benign resize (0.4x) and a 0.75x delivery leave room for a 64 px tile
    images = [Image.fromarray(rng.integers(0, 256, (240, 256, 3), dtype=np.uint8)) for _ in range(5)]
    examples = detector_data.DetectorExamples()
    counts = detector_data.natural_examples(
        examples, images, [model, model], [3, 32, 32], seed=0, device=torch.device("cpu"), attack_n=2
    )
    assert sum(counts.values()) == 2
    assert list(counts) == [a.name for a in detector_data.NATURAL_ATTACKS[:2]]
    tags = examples.tiles.tags
    assert sum(t.startswith("web|clean") for t in tags) == 5 * 2  # two tiles of each image
    assert sum(t.startswith("web|benign:") for t in tags) == 5 * 2
    assert examples.tiles.labels.count(1) == 2 * 2
    everything = detector_data.DetectorExamples()
    all_counts = detector_data.natural_examples(
        everything, images, [model, model], [3, 32, 32], seed=0, device=torch.device("cpu"), hard_negatives=True
    )
    assert sum(all_counts.values()) == 5 and everything.tiles.labels.count(1) == 5 * 2
    tags = everything.tiles.tags
    assert sum(t.startswith("web|benign:") for t in tags) == 5 * 2 * 2  # a random change and the noisy copy
    assert sum(t.startswith(f"web|benign:{detector_data.HARD_NEGATIVE}|") for t in tags) >= 5 * 2
    brightened = detector_data.DetectorExamples()
    detector_data.natural_examples(
        brightened, images, [model, model], [3, 32, 32], seed=0, device=torch.device("cpu"), attack_n=0,
        extra_negatives=("brightness",),
    )  # fmt: skip
    tags = brightened.tiles.tags
    assert sum(t.startswith("web|benign:") for t in tags) == 5 * 2 * 2  # a random change and the brightened copy
    assert sum(t.startswith("web|benign:brightness|") for t in tags) >= 5 * 2
    assert brightened.tiles.labels.count(1) == 0


def test_fit_learns_to_tell_a_sign_perturbation_from_clean_images():
    """Paired clean and +-16/255 sign-noise images of smooth random patterns: after a short training the
    held-out AUROC is near 1 (an untrained net sits near 0.5)."""
    generator = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(600, 3, 3, 3, generator=generator), size=8, mode="bilinear")
    sign = torch.randint(0, 2, smooth.shape, generator=generator).float() * 2 - 1
    perturbed = (smooth + sign * 16 / 255).clamp(0, 1)
    torch.manual_seed(0)
    model = build_model("perturbation-cnn", 2, [0.5] * 3, [0.25] * 3, width=8)

    def held_out_auroc() -> float:
        with torch.no_grad():
            logits = [native.adversarial_logit(model, v[500:]) for v in (smooth, perturbed)]
        return calib.roc_auc(*logits)

    before = held_out_auroc()
    as_uint8 = [v[:500].mul(255).round().byte() for v in (smooth, perturbed)]
    small = (torch.cat([as_uint8[0][:250], as_uint8[1][:250]]), torch.cat([torch.zeros(250), torch.ones(250)]).long())
    # The same kind of images at another size: the fit interleaves batches of both sizes.
    large = [F.interpolate(v[250:500], size=16, mode="nearest").mul(255).round().byte() for v in (smooth, perturbed)]
    large_group = (torch.cat(large), torch.cat([torch.zeros(250), torch.ones(250)]).long())
    train_detector.fit(model, [small, large_group], epochs=10, lr=0.01, batch_size=50, seed=0,
                       console=Console(quiet=True))  # fmt: skip
    after = held_out_auroc()
    assert after > 0.97 and after > before + 0.2


def test_engine_serves_minus_log_p_clean_of_the_detector(engine):
    """The served score against a float64 reference computed from the detector's logits."""
    assert engine.detector is not None
    served = Engine(
        engine.robust, engine.standard, None, threads=1, detectors=["perturbation_net"], detector=engine.detector
    )
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    _, scores = served.scores(x)
    with torch.no_grad():
        reference = -F.log_softmax(engine.detector.model(x).double(), dim=1)[:, det.CLEAN_CLASS]
    torch.testing.assert_close(scores["perturbation_net"].double(), reference, rtol=1e-4, atol=1e-6)
    # Confident-clean images keep distinct scores (no rounding of p_clean to 1.0).
    p = torch.tensor([[1.0, 1e-20], [1.0, 1e-25]])
    assert det._minus_log_clean(p)[0] > det._minus_log_clean(p)[1] > 0


def test_engine_without_a_detector_says_how_to_get_one(engine):
    served = Engine(engine.robust, engine.standard, None, threads=1)  # uncalibrated: what it can compute
    assert "perturbation_net" not in {d.name for d in served.detectors}
    with pytest.raises(EngineError, match="worker.research.train_detector"):
        Engine(engine.robust, engine.standard, None, threads=1, detectors=["perturbation_net"])
    with pytest.raises(EngineError, match="not a perturbation detector"):
        Engine(engine.robust, engine.standard, None, threads=1, detector=engine.standard)


def test_train_detector_command_writes_a_bundle_the_engine_and_calibration_use(
    bundle_dirs, tiny_tarball, web_set, tmp_path
):
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    shutil.rmtree(default_detector_dir(robust))
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n", "20", "--pool", "unseen", "--epochs", "2", "--width", "4", "--batch-size", "8", "--steps", "1",
            "--threads", "1", "--seed", "5", "--web-dir", str(web_set), "--holdout", "0.4"]  # fmt: skip
    assert train_detector.main(args) == 0
    detector = load_bundle(default_detector_dir(robust))
    assert detector.metadata["classes"] == ["clean", "adversarial"]
    assert detector.metadata["command"].startswith("python -m worker.research.train_detector --robust")
    assert detector.metadata["training"]["pool_images"] == 20 and detector.metadata["training"]["seed"] == 5
    assert detector.metadata["for_bundles"]["robust"] == load_bundle(robust).version
    # both views measured: with --holdout 0.4 the held-out tail (the last examples, web images) has both classes
    assert {"model_input", "tiles"} <= set(detector.metadata["metrics"])
    examples = detector.metadata["training"]["examples"]
    assert examples["web_images"] == 10 and examples["tiles"] > 0  # the web set's train split, used whole
    engine = Engine.from_bundles(robust, bundle_dirs[1], threads=1)  # found in its default place
    assert engine.detector.version == detector.version
    # Calibration then keeps to images the detector never saw and names the detector it was fitted with.
    assert calibrate.main([
        "--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
        "--n-clean", "12", "--n-adv", "6", "--steps", "1", "--threads", "1", "--measure", "kl_rs",
        "--web-dir", str(web_set), "--n-web-adv", "2",
    ]) == 0  # fmt: skip
    artefact = calib.load(calib.default_path(robust))
    assert artefact.bundles["detector"] == detector.version and "perturbation_net" in artefact.detectors
    assert "nor the perturbation detector" in artefact.data["pool"]
    served = Engine.from_bundles(robust, bundle_dirs[1], threads=1)
    verdict = served.analyse_tensor(torch.rand(1, 3, 8, 8))[0]
    assert "perturbation_net" in verdict.scores and verdict.flagged is not None


@pytest.mark.slow
def test_saved_examples_are_reused_only_for_the_same_recipe(bundle_dirs, tiny_tarball, web_set, tmp_path, capsys):
    """--examples keeps the attacked examples; a run with other options (here --hard-negatives) must not train
    on the old ones."""
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    saved = tmp_path / "examples.pt"
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n", "20", "--pool", "unseen", "--epochs", "1", "--width", "4", "--batch-size", "8", "--steps", "1",
            "--threads", "1", "--web-dir", str(web_set), "--examples", str(saved)]  # fmt: skip
    assert train_detector.main(args) == 0
    first = torch.load(saved, weights_only=False)
    assert first["recipe"]["hard_negatives"] == "False"
    assert train_detector.main(args) == 0
    assert "examples read from" in capsys.readouterr().err
    assert train_detector.main([*args, "--hard-negatives"]) == 0
    assert "made another way" in capsys.readouterr().err
    second = torch.load(saved, weights_only=False)
    assert second["recipe"]["hard_negatives"] == "True"
    assert second["counts"]["model_inputs"] > first["counts"]["model_inputs"]  # one more clean example per image
    assert "web_hard_negatives" not in second["recipe"]  # older examples files stay valid without the option
    assert train_detector.main([*args, "--hard-negatives", "--web-hard-negatives", "brightness"]) == 0
    assert "made another way" in capsys.readouterr().err
    third = torch.load(saved, weights_only=False)
    assert third["recipe"]["web_hard_negatives"] == ["brightness"]
    assert third["counts"]["model_inputs"] > second["counts"]["model_inputs"]
    with pytest.raises(SystemExit):
        train_detector.parse_args([*args, "--web-hard-negatives", "sepia"])


def test_attacks_on_an_extra_source_target_that_model_and_stay_in_budget(engine):
    """An --attack-source's specs attack the source model itself: its loss rises, the pair's specs are kept,
    and a spec naming a model that is not there fails loudly rather than attacking another one."""
    source = make_source_model()
    mix = train_detector.training_attacks(["mobilenetv2"])
    assert mix[: len(train_detector.TRAINING_ATTACKS)] == train_detector.TRAINING_ATTACKS
    extra = mix[len(train_detector.TRAINING_ATTACKS) :]
    assert {s.target for s in extra} == {"mobilenetv2"} and len(extra) == len(train_detector.SOURCE_ATTACKS)
    spec = next(s for s in extra if (s.objective, s.budget) == ("pgd", 8))
    assert spec.model(engine, {"mobilenetv2": source}) is source
    with pytest.raises(ValueError, match="not among the attacked models"):
        spec.model(engine, {})
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 2, (16,))
    with Console(file=None, quiet=True) as console, make_progress(console) as progress:
        adv, names, fooled = cifar_attacks.attack_all(
            engine, x, y, 5, 8, 0, progress, mix=[spec], sources={"mobilenetv2": source}
        )
    assert set(names) == {spec.name} and spec.name == "pgd-8-m"
    assert (adv - x).abs().max() <= 8 / 255 + 1 / 255  # the budget, plus the 8-bit rounding
    with torch.no_grad():
        assert F.cross_entropy(source(adv), y) > F.cross_entropy(source(x), y)
        assert fooled.tolist() == (source(adv).argmax(1) != y).tolist()  # judged on the source, not the pair


def test_attack_sources_must_fit_the_pair_and_be_one_per_family(bundle_dirs, tmp_path):
    robust, standard = (load_bundle(d) for d in bundle_dirs)
    good = make_source_bundle(tmp_path / "mobilenet")
    sources = train_detector.load_attack_sources([str(good)], robust, standard, torch.device("cpu"))
    assert list(sources) == ["mobilenetv2"]
    twin = make_source_bundle(tmp_path / "twin", seed=8)
    with pytest.raises(ValueError, match="a second mobilenetv2 model"):
        train_detector.load_attack_sources([str(good), str(twin)], robust, standard, torch.device("cpu"))
    other_classes = make_source_bundle(tmp_path / "three", classes=["bright", "dark", "grey"])
    with pytest.raises(ValueError, match="differs from the robust bundle in classes"):
        train_detector.load_attack_sources([str(other_classes)], robust, standard, torch.device("cpu"))
    with pytest.raises(ValueError, match="one of the pair"):
        train_detector.load_attack_sources([str(bundle_dirs[1])], robust, standard, torch.device("cpu"))


@pytest.mark.slow
def test_a_detector_trained_with_an_attack_source_records_it_and_evaluate_knows_the_family(
    bundle_dirs, tiny_tarball, web_set, tmp_path, capsys
):
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    source = make_source_bundle(tmp_path / "mobilenet")
    saved = tmp_path / "examples.pt"
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n", "20", "--pool", "unseen", "--epochs", "1", "--width", "4", "--batch-size", "8", "--steps", "1",
            "--threads", "1", "--web-dir", str(web_set), "--examples", str(saved)]  # fmt: skip
    assert train_detector.main(args) == 0
    assert train_detector.main([*args, "--attack-source", str(source)]) == 0
    assert "made another way" in capsys.readouterr().err  # the pair-only examples are not reused
    recipe = torch.load(saved, weights_only=False)["recipe"]
    assert recipe["bundles"][-1] == load_bundle(source).version and "pgd-8-m" in " ".join(recipe["attacks"])
    detector = load_bundle(default_detector_dir(robust))
    training = detector.metadata["training"]
    assert training["attack_sources"] == [
        {"arch": "mobilenetv2", "version": load_bundle(source).version, "path": str(source)}
    ]
    assert any(a.startswith("pgd-8-m ") for a in training["attacks"])
    assert all("mobilenetv2" in a for a in training["web_attacks"])
    served = Engine.from_bundles(robust, bundle_dirs[1], calibration_path=None, threads=1)
    assert detector_source_families(served) == {"preact18", "mobilenetv2"}
    assert train_detector.main([*args, "--attack-source", str(tmp_path / "missing")]) == 2


def test_sensor_noise_augmentation_noises_the_chosen_share_on_the_8_bit_grid():
    """--noise-augment: the chosen images get Gaussian noise of sigma 1-4/255 (as the benign change), rounded
    to 8 bits and kept in [0, 1]; the others are returned untouched."""
    generator = torch.Generator().manual_seed(0)
    x = torch.full((400, 3, 64, 64), 128 / 255)
    assert torch.equal(train_detector.add_sensor_noise(x, 0.0, generator), x)
    noisy = train_detector.add_sensor_noise(x, 0.5, generator)
    changed = (noisy != x).flatten(1).any(1)
    assert 150 < int(changed.sum()) < 250
    assert torch.equal(noisy[~changed], x[~changed])
    assert torch.equal(noisy.mul(255).round(), noisy.mul(255)) and noisy.min() >= 0 and noisy.max() <= 1
    spread = (noisy[changed] - x[changed]).mul(255).flatten(1).std(1)
    # sigma 1-4 plus the rounding's 1/12 variance
    assert spread.min() > 0.9 and spread.max() < 4.1 and spread.max() - spread.min() > 2
    every = train_detector.add_sensor_noise(torch.ones(8, 3, 16, 16), 1.0, generator)
    assert every.max() <= 1 and (every < 1).any()  # clipped at white, noisy below it


def test_noise_augmentation_is_recorded_and_bounded(bundle_dirs, tiny_tarball, web_set, tmp_path):
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n", "20", "--pool", "unseen", "--epochs", "1", "--width", "4", "--batch-size", "8", "--steps", "1",
            "--threads", "1", "--web-dir", str(web_set)]  # fmt: skip
    with pytest.raises(SystemExit):
        train_detector.parse_args([*args, "--noise-augment", "1.5"])
    assert train_detector.main([*args, "--noise-augment", "0.5"]) == 0
    assert load_bundle(default_detector_dir(robust)).metadata["training"]["noise_augment"] == 0.5


def test_tail_loss_is_the_mean_cross_entropy_of_the_hardest_clean_examples():
    """Against a float64 reference: the ceil(fraction * n_clean) clean examples with the largest loss, and no
    gradient reaches the easier clean examples or any adversarial one."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    y = (torch.arange(40) % 4 == 0).long()  # 30 clean, 10 adversarial
    tail = train_detector.TailLoss(weight=2.0, fraction=0.1)
    loss = tail(logits, y)
    per_clean = -F.log_softmax(logits.detach(), dim=1)[y == 0, 0]
    expected = 2.0 * per_clean.sort(descending=True).values[:3].mean()
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    touched = logits.grad.abs().sum(1) > 0
    hardest = torch.zeros(40, dtype=torch.bool)
    clean_index = (y == 0).nonzero().squeeze(1)
    hardest[clean_index[per_clean.topk(3).indices]] = True
    assert torch.equal(touched, hardest)
    # A batch of adversarial examples only: no tail, and still a graph to backpropagate through.
    only_adversarial = tail(logits[y == 1], y[y == 1])
    assert only_adversarial.item() == 0 and only_adversarial.requires_grad


def test_tail_loss_lowers_the_hardest_clean_score_more_than_cross_entropy_alone():
    """One SGD step of ``detector_loss`` on a two-branch detector: with the tail term, the clean image that
    scored highest falls further than with cross-entropy alone (both branches pay it)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(64, 3, 16, 16, generator=generator)
    y = (torch.arange(64) % 2).long()
    class_weight = torch.ones(2)

    def after_one_step(tail: train_detector.TailLoss | None) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model("perturbation-pair", 2, [0.5] * 3, [0.25] * 3, width=4).eval()  # BN in eval: fixed
        optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
        optimiser.zero_grad()
        train_detector.detector_loss(model, x, y, class_weight, tail).backward()
        optimiser.step()
        with torch.no_grad():
            return native.adversarial_logit(model, x)

    torch.manual_seed(0)
    untrained = build_model("perturbation-pair", 2, [0.5] * 3, [0.25] * 3, width=4).eval()
    with torch.no_grad():
        before = native.adversarial_logit(untrained, x)
    hardest = (y == 0).nonzero().squeeze(1)[before[y == 0].argmax()]
    plain, tailed = after_one_step(None), after_one_step(train_detector.TailLoss(weight=5.0, fraction=0.05))
    assert tailed[hardest] < plain[hardest] < before[hardest] + 1e-3


@pytest.mark.slow
def test_init_starts_from_a_detector_of_the_same_design_and_records_it(bundle_dirs, tiny_tarball, web_set, tmp_path):
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    start = load_bundle(default_detector_dir(robust))
    design = ["--arch", start.metadata["arch"], "--width", str(start.metadata["width"])]
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n", "20", "--pool", "unseen", "--epochs", "1", "--batch-size", "8", "--steps", "1", "--threads", "1",
            "--web-dir", str(web_set), "--tail-weight", "1", "--out", str(tmp_path / "tuned")]  # fmt: skip
    wider = ["--arch", start.metadata["arch"], "--width", str(start.metadata["width"] * 2)]
    assert train_detector.main([*args, *wider, "--init", str(default_detector_dir(robust))]) == 2
    assert train_detector.main([*args, *design, "--init", str(bundle_dirs[1])]) == 2  # not a detector
    assert train_detector.main([*args, *design, "--init", str(default_detector_dir(robust))]) == 0
    tuned = load_bundle(tmp_path / "tuned")
    assert tuned.metadata["training"]["init"] == {"path": str(default_detector_dir(robust)), "version": start.version}
    assert tuned.metadata["training"]["tail_loss"] == {"weight": 1.0, "fraction": 0.05}
    assert tuned.version != start.version
    with pytest.raises(SystemExit):
        train_detector.parse_args([*args, "--tail-fraction", "0"])
