"""Augmentation (`ferkit.augment`) and recipes (`ferkit.recipe`): small, exact checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ferkit.augment import (
    AugmentConfig,
    augment_batch,
    mix_batch,
    normalize,
    random_erasing,
    random_photometric,
    sample_affine,
    tta_views,
)
from ferkit.recipe import Recipe, apply_overrides

torch.set_num_threads(1)

RECIPES = Path(__file__).resolve().parents[1] / "src" / "ferkit" / "recipes"
#: every geometric and erasing option off
OFF = dict(
    hflip=0.0, vflip=0.0, rotation=0.0, scale=(1.0, 1.0), shear=0.0, translate=0.0, erasing=0.0
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 48, 48), generator=gen(1000 + seed), dtype=torch.uint8)


def block_image(n: int, top: int, left: int, size: int = 8) -> torch.Tensor:
    """n dark images, each with one bright size x size block at (top, left)."""
    x = torch.full((n, 48, 48), 20, dtype=torch.uint8)
    x[:, top : top + size, left : left + size] = 235
    return x


def centroid(img: torch.Tensor) -> tuple[float, float]:
    """(row, col) centre of mass of the brightness above the background, for 48 x 48."""
    w = (img - img.min()).clamp(min=0).double()
    rows = torch.arange(48, dtype=torch.float64)
    total = w.sum()
    return float((w.sum(1) * rows).sum() / total), float((w.sum(0) * rows).sum() / total)


# ---- normalize / augment_batch ----


def test_normalize_shapes_and_values():
    x = torch.tensor([[0, 255]], dtype=torch.uint8).expand(48, 2).reshape(1, 48, 2)
    x = F.pad(x, (0, 46)).reshape(1, 48, 48)
    y = normalize(x)
    assert y.shape == (1, 1, 48, 48) and y.dtype == torch.float32
    assert y[0, 0, 0, 0] == pytest.approx(-2.0) and y[0, 0, 0, 1] == pytest.approx(2.0)
    # 4-D and float input give the same result
    assert torch.equal(normalize(x.unsqueeze(1)), y)
    assert torch.equal(normalize(x.float()), y)


def test_augment_batch_shape_dtype_and_determinism():
    x = random_images(6)
    cfg = AugmentConfig(erasing=0.5)
    a = augment_batch(x, cfg, gen(1))
    b = augment_batch(x, cfg, gen(1))
    c = augment_batch(x, cfg, gen(2))
    assert a.shape == (6, 1, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the input is left alone
    assert torch.equal(x, random_images(6))


def test_everything_off_is_plain_normalisation():
    x = random_images(4)
    cfg = AugmentConfig(**OFF)
    assert not cfg.geometric
    assert torch.equal(augment_batch(x, cfg, gen(0)), normalize(x))
    # the identity warp (taken when an option is "on" at its neutral value) changes nothing
    theta = sample_affine(4, cfg, gen(0), "cpu")
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3))


def test_photometric_changes_are_per_image_monotone_and_keep_the_stream_when_off():
    x = random_images(64)
    base = AugmentConfig(**OFF)
    # off: no random numbers drawn, so a recipe without them augments exactly as before
    g = gen(5)
    assert torch.equal(augment_batch(x, base, g), normalize(x))
    assert torch.equal(g.get_state(), gen(5).get_state())
    x01 = x.float().div(255).unsqueeze(1)
    for key, value in (("brightness", 0.5), ("contrast", 0.5), ("gamma", 0.7)):
        cfg = AugmentConfig(**{**OFF, key: value})
        assert cfg.photometric and not cfg.geometric
        out = random_photometric(x01, cfg, gen(7))
        assert out.shape == x01.shape and 0 <= out.min() and out.max() <= 1
        assert torch.equal(out, random_photometric(x01, cfg, gen(7)))
        # one draw per image: brighter pixels stay at least as bright (gamma and positive
        # factors keep the order), and images differ in how they changed
        order = x01.flatten(1).argsort(dim=1)
        assert (out.flatten(1).gather(1, order).diff(dim=1) >= -1e-6).all(), key
        change = (out - x01).flatten(1).abs().mean(1)
        assert change.std() > 1e-3, key
        torch.testing.assert_close(augment_batch(x, cfg, gen(7)), normalize(out[:, 0] * 255))
    # the documented ranges: contrast x 1.5 at most around the mean, then clipped
    cfg = AugmentConfig(**{**OFF, "contrast": 0.5})
    flat = torch.full((8, 1, 4, 4), 0.5)
    flat[:, :, 0, 0] = 0.7
    out = random_photometric(flat, cfg, gen(1))
    spread = out[:, 0, 0, 0] - out[:, 0, 1, 1]
    assert ((spread >= 0.1 - 1e-5) & (spread <= 0.3 + 1e-5)).all()


@pytest.mark.parametrize("key, value", [("brightness", 1.5), ("contrast", -0.1), ("gamma", -1)])
def test_photometric_ranges_are_checked(key, value):
    with pytest.raises(ValueError, match=f"augment.{key}"):
        Recipe.from_yaml(RECIPES / "paper.yaml", [f"augment.{key}={value}"])


def test_hflip_one_mirrors_the_image():
    x = random_images(5)
    out = augment_batch(x, AugmentConfig(**{**OFF, "hflip": 1.0}), gen(3))
    torch.testing.assert_close(out, normalize(x).flip(-1), atol=1e-4, rtol=0)
    out = augment_batch(x, AugmentConfig(**{**OFF, "vflip": 1.0}), gen(3))
    torch.testing.assert_close(out, normalize(x).flip(-2), atol=1e-4, rtol=0)


def test_translation_moves_content_against_theta():
    """Convention: theta maps output to input coordinates (grid_sample), so a positive
    translation entry tx (in [-1, 1] units, i.e. tx * 24 pixels) samples the input to the
    right of each output pixel: the content moves LEFT by tx * 24 pixels (likewise UP by
    ty * 24). Drawn shifts are symmetric, so both directions must occur."""
    n, top, left, size = 16, 20, 20, 8
    x = block_image(n, top, left, size)
    cfg = AugmentConfig(**{**OFF, "translate": 0.15})
    theta = sample_affine(n, cfg, gen(7), "cpu")
    out = augment_batch(x, cfg, gen(7))  # same seed: the same per-sample matrices
    assert (theta[:, 0, 2] > 0.05).any() and (theta[:, 0, 2] < -0.05).any()
    assert (theta[:, :, 2].abs() <= 0.3 + 1e-6).all()  # 0.15 of the size = 0.3 in [-1, 1]
    r0, c0 = top + (size - 1) / 2, left + (size - 1) / 2
    for i in range(n):
        r, c = centroid(out[i, 0])
        assert c == pytest.approx(c0 - 24 * float(theta[i, 0, 2]), abs=0.35)
        assert r == pytest.approx(r0 - 24 * float(theta[i, 1, 2]), abs=0.35)


def test_per_sample_parameters_differ():
    n = 12
    cfg = AugmentConfig()
    theta = sample_affine(n, cfg, gen(0), "cpu")
    assert len({tuple(t.flatten().tolist()) for t in theta}) == n
    flips = theta[:, 0, 0] < 0
    assert flips.any() and not flips.all()  # hflip 0.5 flips some, not all
    # the same image in every row comes out different in every row
    out = augment_batch(random_images(1).expand(n, 48, 48), cfg, gen(0))
    flat = out.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(n) for j in range(i))


def test_rotation_only_keeps_a_centred_symmetric_blob():
    # a centred disc is invariant to rotation: the warp must be centred on the image
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    disc = (((yy - 23.5) ** 2 + (xx - 23.5) ** 2) < 100).to(torch.uint8) * 200
    x = disc.expand(4, 48, 48)
    out = augment_batch(x, AugmentConfig(**{**OFF, "rotation": 30.0}), gen(5))
    for i in range(4):
        r, c = centroid(out[i, 0])
        assert r == pytest.approx(23.5, abs=0.2) and c == pytest.approx(23.5, abs=0.2)


@pytest.mark.parametrize("area", [(0.02, 0.05), (0.15, 0.2)])
def test_erasing_zeroes_one_rectangle_of_configured_area(area):
    n = 32
    x = torch.full((n, 48, 48), 200, dtype=torch.uint8)
    cfg = AugmentConfig(**{**OFF, "erasing": 1.0, "erasing_area": area})
    out = augment_batch(x, cfg, gen(11))[:, 0]
    assert (normalize(x)[:, 0] != 0).all()
    hw = 48 * 48
    sizes = []
    for i in range(n):
        zero = out[i] == 0
        rows = zero.any(1).nonzero().flatten()
        cols = zero.any(0).nonzero().flatten()
        assert len(rows) and len(cols), "erasing=1 must erase every sample"
        r = int(rows.max() - rows.min() + 1)
        c = int(cols.max() - cols.min() + 1)
        assert int(zero.sum()) == r * c, "the erased pixels form one full rectangle"
        # the real-valued box (h x w, area in the range) covers r = h +- 1 rows, c = w +- 1 cols
        assert (r + 1) * (c + 1) >= area[0] * hw
        assert (r - 1) * (c - 1) <= area[1] * hw
        # outside the box the image is untouched
        assert torch.equal(out[i][~zero], normalize(x)[i, 0][~zero])
        sizes.append(r * c)
    assert len(set(sizes)) > 1


def test_erasing_probability_and_direct_call():
    n = 200
    x = normalize(torch.full((n, 48, 48), 220, dtype=torch.uint8))
    out = random_erasing(x, AugmentConfig(erasing=0.3), gen(2))
    erased = (out == 0).flatten(1).any(1).float().mean().item()
    assert 0.18 < erased < 0.42
    assert torch.equal(random_erasing(x, AugmentConfig(erasing=0.0), gen(2)), x)


# ---- mixup / cutmix: the targets follow the images, labels are never changed ----


def test_mix_batch_off_returns_targets_unchanged():
    x = normalize(random_images(4))
    labels = torch.tensor([0, 3, 6, 2])
    xo, to = mix_batch(x, labels, AugmentConfig(), gen(0))
    assert xo is x and to is labels
    assert torch.equal(labels, torch.tensor([0, 3, 6, 2]))


def _mix_parts(targets: torch.Tensor, n: int) -> tuple[float, list[int]]:
    """From mixed one-hot targets of n distinct classes: lam and the partner of every row."""
    lam = None
    partners = []
    for i in range(n):
        row = targets[i]
        others = [j for j in range(n) if j != i and row[j] > 0]
        assert len(others) <= 1
        if others:
            lam_i = float(row[i])
            assert lam is None or lam_i == pytest.approx(lam, abs=1e-6)
            lam = lam_i
        partners.append(others[0] if others else i)
    assert lam is not None
    return lam, partners


def test_mixup_targets_are_convex_and_match_the_images():
    n = 8
    x = normalize(random_images(n))
    y = torch.eye(n)
    cfg = AugmentConfig(mixup=0.4)
    xm, tm = mix_batch(x, y, cfg, gen(4))
    xm2, tm2 = mix_batch(x, y, cfg, gen(4))
    assert torch.equal(xm, xm2) and torch.equal(tm, tm2)
    assert torch.equal(y, torch.eye(n))  # the inputs are not modified
    assert (tm >= 0).all() and (tm <= 1).all()
    torch.testing.assert_close(tm.sum(1), torch.ones(n))
    lam, partners = _mix_parts(tm, n)
    assert 0 < lam < 1
    for i, j in enumerate(partners):
        torch.testing.assert_close(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5, rtol=0)


def test_cutmix_targets_match_the_pasted_area():
    n = 8
    x = torch.rand(n, 1, 48, 48, generator=gen(99))  # continuous: no two pixels coincide
    y = torch.eye(n)
    for seed in range(4):
        xm, tm = mix_batch(x, y, AugmentConfig(cutmix=1.0), gen(seed))
        torch.testing.assert_close(tm.sum(1), torch.ones(n))
        assert (tm >= 0).all() and (tm <= 1).all()
        lam, partners = _mix_parts(tm, n)
        for i, j in enumerate(partners):
            if j == i:
                continue
            from_j = (xm[i] == x[j]) & (xm[i] != x[i])
            kept = (xm[i] == x[i]) & (xm[i] != x[j])
            assert int(from_j.sum() + kept.sum()) == 48 * 48
            assert 1 - float(from_j.float().mean()) == pytest.approx(lam, abs=1e-6)


# ---- test-time views ----


def test_tta_views():
    x = normalize(random_images(3))
    assert torch.equal(tta_views(x, "none")[0], x)
    flip = tta_views(x, "flip")
    assert flip.shape == (2, 3, 1, 48, 48) and torch.equal(flip[1], x.flip(-1))
    ten = tta_views(x, "ten-crop")
    assert ten.shape == (10, 3, 1, 48, 48)
    assert torch.equal(ten[5:], ten[:5].flip(-1))
    assert len({tuple(v.flatten()[:50].tolist()) for v in ten}) == 10
    with pytest.raises(ValueError, match="TTA"):
        tta_views(x, "five-crop")


# ---- recipes ----


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_reads(path):
    r = Recipe.from_yaml(path)
    assert r.name == path.stem
    assert "PrivateTest" not in r.train_splits and r.val_split != "PrivateTest"
    assert isinstance(r.augment_config, AugmentConfig)


def test_recipe_overrides():
    r = Recipe.from_yaml(
        RECIPES / "paper.yaml",
        [
            "epochs=3",
            "lr=0.01",
            "augment.erasing=0.5",
            "model_options.dropout=0.1",
            "train_splits=[Training]",
        ],
    )
    assert (r.epochs, r.lr, r.model_options) == (3, 0.01, {"dropout": 0.1})
    assert r.augment["erasing"] == 0.5 and r.augment_config.erasing == 0.5
    assert r.augment["hflip"] == 0.5  # the file's other augmentation keys are kept
    # the file itself is not changed by overrides
    assert Recipe.from_yaml(RECIPES / "paper.yaml").augment.get("erasing", 0.0) == 0.0
    d = {"augment": {"hflip": 0.5}}
    assert apply_overrides(d, ["augment.rotation=5"]) == {"augment": {"hflip": 0.5, "rotation": 5}}
    assert d == {"augment": {"hflip": 0.5}}


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["bogus=1"], "unknown recipe key"),
        (["augment.bogus=1"], "unknown augmentation"),
        (["epochs"], "key=value"),
        (["optimizer=lbfgs"], "optimizer"),
        (["epochs=0"], "positive"),
    ],
)
def test_recipe_rejects_bad_keys(overrides, match):
    with pytest.raises(ValueError, match=match):
        Recipe.from_yaml(RECIPES / "paper.yaml", overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["val_split=PrivateTest"],
        ["train_splits=[Training, PrivateTest]"],
        ["train_splits=PrivateTest"],
        ["val_split=[PrivateTest]"],
    ],
)
def test_recipe_refuses_the_test_split(tmp_path, overrides):
    with pytest.raises(ValueError, match="PrivateTest"):
        Recipe.from_yaml(RECIPES / "paper.yaml", overrides)
    # and written in the file itself
    key, _, value = overrides[0].partition("=")
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: mba_cnn\n{key}: {value}\n")
    with pytest.raises(ValueError, match="PrivateTest"):
        Recipe.from_yaml(path)
    with pytest.raises(ValueError, match="PrivateTest"):
        Recipe(**{key: __import__("yaml").safe_load(value)})


def test_recipes_by_name_or_path(tmp_path, monkeypatch):
    from ferkit.recipe import list_recipes

    assert {"paper", "best", "finetune"} <= set(list_recipes())
    assert Recipe.from_yaml("paper") == Recipe.from_yaml("paper.yaml")
    assert Recipe.from_yaml("paper") == Recipe.from_yaml(RECIPES / "paper.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper").mkdir()  # a run folder of that name is not the recipe
    assert Recipe.from_yaml("paper").name == "paper"
    (tmp_path / "paper.yaml").write_text("name: mine\nmodel: mba_cnn\nepochs: 1\n")
    assert Recipe.from_yaml("paper.yaml").name == "mine"  # a file as given wins
    with pytest.raises(ValueError, match="no such recipe.*paper-noaug"):
        Recipe.from_yaml("nope")
    with pytest.raises(ValueError, match="no such recipe"):
        Recipe.from_yaml("sub/paper.yaml")  # a path is a path: no fallback to the name
