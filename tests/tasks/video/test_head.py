"""GDA head, alpha selection, safetensors storage and embedding heads, against independent
computations (explicit Gaussian densities, a per-sample Ledoit-Wolf, torch's own modules)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tasks.model.heads import (
    HeadMismatch,
    apply_embedding_head,
    convert_state_dict,
    load_embedding_head,
    load_torch_state_dict,
)
from tasks.video.head import (
    ensemble_proba,
    fit_gda,
    head_logit,
    ledoit_wolf,
    load_head,
    save_head,
    select_alpha,
    zero_shot_logit,
)
from tasks.video.zero_shot import zero_shot_near_miss

MODEL = {
    "name": "ViT-B-32",
    "architecture": "ViT-B-32",
    "pretrained": "/models/b32.safetensors",
    "checkpoint_sha256": "c" * 64,
    "architecture_sha256": "a" * 64,
    "device": "cpu",
}


def lw_reference(x: np.ndarray) -> float:
    """Ledoit & Wolf (2004), Lemma 3.2-3.4, sample by sample (norm ||A||^2 = tr(AA')/d)."""
    n, d = x.shape
    s = x.T @ x / n
    m = np.trace(s) / d
    d2 = np.sum((s - m * np.eye(d)) ** 2) / d
    b2_bar = sum(np.sum((np.outer(r, r) - s) ** 2) / d for r in x) / n**2
    return min(b2_bar, d2) / d2


def unit_rows(rng: np.random.Generator, n: int, d: int, shift: np.ndarray) -> np.ndarray:
    x = rng.normal(size=(n, d)) * 0.3 + shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ledoit_wolf_matches_per_sample_formula() -> None:
    rng = np.random.default_rng(0)
    for n, d in [(40, 6), (7, 12), (200, 3)]:
        x = rng.normal(size=(n, d)) * rng.uniform(0.1, 3, d)
        emp, a = ledoit_wolf(x)
        np.testing.assert_allclose(emp, np.cov(x.T, bias=True, ddof=None) + np.outer(
            x.mean(0), x.mean(0)), atol=1e-12)  # fmt: skip
        assert a == pytest.approx(lw_reference(x), rel=1e-9)
        assert 0 <= a <= 1
    assert ledoit_wolf(np.zeros((5, 3)))[1] == 0.0


def test_gda_logit_is_gaussian_log_likelihood_ratio() -> None:
    rng = np.random.default_rng(1)
    d = 10
    shift = rng.normal(size=d)
    x = np.vstack([unit_rows(rng, 25, d, shift), unit_rows(rng, 10, d, -shift)])
    y = np.r_[np.zeros(25, bool), np.ones(10, bool)]
    head = fit_gda(3.0 * x, y)  # the norm of the inputs must not matter
    # independent: class means, pooled residuals, shrunk covariance, explicit densities
    mu0, mu1 = x[:25].mean(0), x[25:].mean(0)
    r = np.vstack([x[:25] - mu0, x[25:] - mu1])
    a = lw_reference(r)
    s = r.T @ r / len(r)
    cov = (1 - a) * s + a * np.trace(s) / d * np.eye(d)
    inv = np.linalg.inv(cov)

    def log_density(z: np.ndarray, mu: np.ndarray) -> np.ndarray:
        diff = z - mu
        _, logdet = np.linalg.slogdet(2 * np.pi * cov)
        return -0.5 * np.einsum("ij,jk,ik->i", diff, inv, diff) - 0.5 * logdet

    z = unit_rows(rng, 8, d, 0.5 * shift)
    expected = log_density(z, mu1) - log_density(z, mu0) + np.log(10 / 25)
    np.testing.assert_allclose(head_logit(head, z), expected, rtol=1e-8, atol=1e-8)
    assert head.shrinkage == pytest.approx(a) and head.counts == (25, 10)
    np.testing.assert_allclose(head.cov, cov, atol=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        fit_gda(x, np.zeros(35, bool))


def test_alpha_zero_reproduces_zero_shot_exactly() -> None:
    rng = np.random.default_rng(2)
    images, near, normal = rng.normal(size=(50, 16)), rng.normal(size=16), rng.normal(size=16)
    for scale in (1.0, 100.0, 1e6):
        expected = zero_shot_near_miss(images, near, normal, scale)
        zs = zero_shot_logit(images, near, normal, scale)
        head = rng.normal(0, 50, size=50)
        np.testing.assert_array_equal(ensemble_proba(head, zs, 0.0), expected)
    # 0.5 * 1 + 0.5 * (-1) = 0 -> 1/2; 0.25 * 4 + 0.75 * 0 = 1 -> sigmoid(1)
    np.testing.assert_allclose(ensemble_proba(np.array([1.0]), np.array([-1.0]), 0.5), [0.5])
    np.testing.assert_allclose(
        ensemble_proba(np.array([4.0]), np.array([0.0]), 0.25), [1 / (1 + np.exp(-1.0))]
    )


def _videos(rng: np.random.Generator, informative_zs: bool):
    """5 videos (one without positives); either the embeddings separate the classes and
    the zero-shot logit is noise, or the embeddings barely do and zero-shot is right."""
    d, x, y, vid = 8, [], [], []
    shift = np.r_[0.05 if informative_zs else 1.0, np.zeros(d - 1)]
    for v in range(5):
        lab = np.r_[np.zeros(20, bool), np.ones(6, bool)] if v != 2 else np.zeros(26, bool)
        x.append(
            np.where(lab[:, None], unit_rows(rng, 26, d, shift), unit_rows(rng, 26, d, -shift))
        )
        y.append(lab)
        vid += [f"v{v}.mp4"] * 26
    y_all = np.concatenate(y)
    zs = np.where(y_all, 4.0, -4.0) if informative_zs else rng.normal(0, 3, len(y_all))
    return np.vstack(x), y_all, np.array(vid), zs  # fmt: skip


def test_select_alpha_by_leave_one_video_out() -> None:
    rng = np.random.default_rng(3)
    x, y, vid, zs = _videos(rng, informative_zs=False)
    choice = select_alpha(x, y, vid, zs)
    assert choice.folds == 5 and sorted(choice.scores) == [i / 10 for i in range(11)]
    assert choice.alpha >= 0.8  # zero-shot is noise: the head carries the signal
    # independent: alpha 0 scores the zero-shot logit alone
    p = 1 / (1 + np.exp(-zs))
    assert choice.scores[0.0] == pytest.approx(np.mean(np.where(y, np.log(p), np.log(1 - p))))
    x, y, vid, zs = _videos(rng, informative_zs=True)
    assert select_alpha(x, y, vid, zs).alpha <= 0.2  # a near-perfect zero-shot wins
    # ties go to the smaller alpha: a zero-shot logit equal to the held-out head logit
    held = np.empty(len(y))
    for v in np.unique(vid):
        test = vid == v
        held[test] = head_logit(fit_gda(x[~test], y[~test]), x[test])
    assert select_alpha(x, y, vid, held).alpha == 0.0
    # a single video: no fold can be held out
    one = select_alpha(x[:26], y[:26], vid[:26], zs[:26])
    assert (one.alpha, one.folds, one.scores) == (0.0, 0, {})


def test_head_roundtrip_and_identity_check(tmp_path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 6))
    y = np.r_[np.zeros(20, bool), np.ones(10, bool)]
    head = fit_gda(x, y)
    blob = save_head(head, 0.3, MODEL, "p" * 64)
    (tmp_path / "h.safetensors").write_bytes(blob)
    loaded, alpha, meta = load_head(tmp_path / "h.safetensors", dict(MODEL, device="cuda"))
    assert alpha == 0.3 and loaded.counts == (20, 10) and loaded.shrinkage == head.shrinkage
    np.testing.assert_array_equal(head_logit(loaded, x), head_logit(head, x))
    assert json.loads(meta["label_counts"]) == {"negative": 20, "positive": 10}
    assert meta["prompt_set_hash"] == "p" * 64 and meta["model_name"] == "ViT-B-32"
    assert meta["format_version"] == "1"
    for other in ({"checkpoint_sha256": "d" * 64}, {"architecture_sha256": "e" * 64}):
        with pytest.raises(HeadMismatch, match="head was made for model 'ViT-B-32'") as err:
            load_head(blob, dict(MODEL, **other))
        assert "\n" not in str(err.value)
    # no checkpoint hash on either side (random weights): the pretrained tag decides
    tagless = dict(MODEL, checkpoint_sha256=None, pretrained="")
    load_head(save_head(head, 0.0, tagless, "p"), tagless)
    with pytest.raises(HeadMismatch):
        load_head(save_head(head, 0.0, tagless, "p"), dict(tagless, pretrained="laion2b"))
    with pytest.raises(HeadMismatch, match="not a safetensors head"):
        load_head(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", MODEL)
    with pytest.raises(HeadMismatch, match="not an embedding head"):
        load_embedding_head(blob, MODEL)


def _check(module: nn.Module, state: dict, activation: str, normalize: bool) -> None:
    x = np.random.default_rng(5).normal(size=(9, 16)).astype(np.float32)
    head = load_embedding_head(convert_state_dict(state, MODEL, activation, normalize), MODEL)
    inp = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(inp)).numpy()
    out = apply_embedding_head(head, x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected.squeeze(-1) if expected.shape[1] == 1 else expected,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_embedding_heads_match_torch(tmp_path) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 1))
    _check(mlp, mlp.state_dict(), "relu", False)

    class Laion(nn.Module):  # LAION's aesthetic MLP: Linears with Dropout, no activation
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(16, 12), nn.Dropout(0.2), nn.Linear(12, 4), nn.Linear(4, 1)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    laion = Laion()
    _check(laion, laion.state_dict(), "none", True)
    linear = nn.Linear(16, 3)
    _check(linear, linear.state_dict(), "relu", True)  # one layer: no activation applies

    class Timm(nn.Module):  # fc1 / fc2 naming: the trailing number orders the layers
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))

    timm = Timm()
    _check(timm, timm.state_dict(), "relu", False)
    torch.save(mlp.state_dict(), tmp_path / "mlp.pth")
    _check(mlp, load_torch_state_dict(tmp_path / "mlp.pth"), "relu", False)
    torch.save(mlp, tmp_path / "module.pth")  # a pickled module is refused
    with pytest.raises(HeadMismatch, match="not a plain tensor state dict"):
        load_torch_state_dict(tmp_path / "module.pth")


def test_embedding_head_rejects_unknown_layouts() -> None:
    w = torch.zeros(4, 16)
    bad = [
        {"encoder.0.weight": w, "head.0.weight": torch.zeros(1, 4)},  # two prefixes
        {"0.weight": w, "0.running_mean": torch.zeros(4)},  # not a Linear
        {"0.weight": w, "2.weight": torch.zeros(1, 5)},  # shapes do not chain
        {"0.bias": torch.zeros(4)},
        {},
    ]
    for state in bad:
        with pytest.raises(HeadMismatch):
            convert_state_dict(state, MODEL)
    blob = convert_state_dict({"0.weight": w}, MODEL)  # no bias: zeros
    with pytest.raises(HeadMismatch, match="checkpoint_sha256"):
        load_embedding_head(blob, dict(MODEL, checkpoint_sha256="0" * 64))
