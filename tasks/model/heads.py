"""Heads on CLIP embeddings, stored as safetensors (never pickle), tied to their model.

The file format is shared by every head the project stores: string metadata naming the
format, its version, the head's kind and the identity of the CLIP model whose embeddings it
was trained on (architecture and checkpoint sha256), so a head never scores another model's
embeddings silently. The video flow's GDA heads (`tasks.video.head`) and the pool flow's
embedding heads (`pool.heads`: a Linear or an MLP, converted from a plain PyTorch state dict,
e.g. LAION's aesthetic predictor) both use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as _st_save

FORMAT = "clip-curate-head"
FORMAT_VERSION = "1"
IDENTITY_KEYS = ("name", "architecture", "pretrained", "checkpoint_sha256", "architecture_sha256")


class HeadMismatch(ValueError):
    """A head made for another model (or not a head of this format at all)."""


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


# ------------------------------------------------------------------ safetensors storage


def st_save(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> bytes:
    """safetensors bytes that are the same for the same head in every process: safetensors
    writes its header from a hash map (key order differs per process), and a head file's
    sha256 is part of a run key. The header is re-written with sorted keys; offsets are
    relative to the data, which is unchanged."""
    raw = _st_save(dict(tensors), dict(meta))
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + size]), sort_keys=True, separators=(",", ":"))
    text = header.encode() + b" " * (-len(header.encode()) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]


def identity_meta(identity: Mapping[str, Any]) -> dict[str, str]:
    return {
        f"model_{k}": "" if identity.get(k) is None else str(identity[k]) for k in IDENTITY_KEYS
    }


def read_head_file(source: str | Path | bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        tensors = st_load(data)
    except Exception as err:  # a truncated or foreign file: one line, not a traceback
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise HeadMismatch(f"not a safetensors head: {first}") from err
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise HeadMismatch(
            f"not a {FORMAT} v{FORMAT_VERSION} file "
            f"(format {meta.get('format')!r}, version {meta.get('format_version')!r})"
        )
    return tensors, meta


def check_identity(meta: Mapping[str, str], expected_model: Mapping[str, Any]) -> None:
    """Raise `HeadMismatch` unless the head's model is `expected_model`: same architecture
    and checkpoint sha256 (the pretrained tag too when neither side knows a checkpoint)."""
    want = identity_meta(expected_model)
    keys = ["model_architecture_sha256", "model_checkpoint_sha256"]
    if not want["model_checkpoint_sha256"] and not meta.get("model_checkpoint_sha256"):
        keys.append("model_pretrained")
    diff = [k for k in keys if meta.get(k, "") != want[k]]
    if diff:
        got = ", ".join(f"{k[6:]}={meta.get(k, '')[:16]!r}" for k in diff)
        exp = ", ".join(f"{k[6:]}={want[k][:16]!r}" for k in diff)
        raise HeadMismatch(
            f"head was made for model {meta.get('model_name')!r} ({got}), "
            f"not {want['model_name']!r} ({exp})"
        )


# ------------------------------------------------------------------ embedding heads

_KEY = re.compile(r"^(?P<prefix>.*?)(?:(?P<index>\d+)\.)?(?P<kind>weight|bias)$")


@dataclass
class EmbeddingHead:
    weights: list[np.ndarray]  # (out, in) per layer, float32
    biases: list[np.ndarray]
    activation: Literal["relu", "none"]
    normalize_input: bool
    meta: dict[str, str]


def _layers(state: Mapping[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Linear layers in order, from `weight`/`bias` or `[prefix.]N.weight`/`N.bias` keys."""
    found: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for key, value in state.items():
        match = _KEY.match(key)
        if not match:
            raise HeadMismatch(f"state dict key {key!r} is not a Linear weight or bias")
        arr = value.detach().cpu().float().numpy() if hasattr(value, "detach") else value
        index = int(match["index"]) if match["index"] is not None else -1
        found.setdefault((match["prefix"], index), {})[match["kind"]] = np.asarray(arr)
    if len({p for p, _ in found}) != 1 or (len(found) > 1 and min(i for _, i in found) < 0):
        raise HeadMismatch(f"state dict mixes layer names: {sorted(state)}")
    layers = []
    for (_, i), wb in sorted(found.items(), key=lambda kv: kv[0][1]):
        w = wb.get("weight")
        if w is None or w.ndim != 2:
            raise HeadMismatch(f"layer {i}: needs a 2-D weight")
        b = wb.get("bias", np.zeros(w.shape[0], np.float32))
        if b.shape != (w.shape[0],) or (layers and layers[-1][0].shape[0] != w.shape[1]):
            raise HeadMismatch(f"layer {i}: shapes {w.shape}/{b.shape} do not chain")
        layers.append((w.astype(np.float32), b.astype(np.float32)))
    if not layers:
        raise HeadMismatch("empty state dict")
    return layers


def convert_state_dict(
    state: Mapping[str, Any],
    model_identity: Mapping[str, Any],
    activation: Literal["relu", "none"] = "relu",
    normalize_input: bool = True,
) -> bytes:
    """safetensors bytes of a Linear/MLP head, with the model identity it belongs to.

    Accepted keys: `[prefix]weight`/`bias` (one nn.Linear), or `[prefix]N.weight`/`N.bias`
    with one shared prefix: nn.Sequential numbering (`0.weight`, `layers.2.bias`; ReLU or
    Dropout take the gaps) or numbered names (`fc1.weight`, `fc2.weight`). Layers run in
    index order with `activation` between them; a missing bias is zero; anything else
    (norm layers, running stats) is refused. LAION's aesthetic MLP has Dropout only:
    convert it with "none".
    `normalize_input`: L2-normalise embeddings first (what CLIP heads are trained on).
    """
    layers = _layers(state)
    tensors = {}
    for k, (w, b) in enumerate(layers):
        tensors[f"layers.{k}.weight"], tensors[f"layers.{k}.bias"] = w, b
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "embedding_mlp",
        **identity_meta(model_identity),
        "n_layers": str(len(layers)),
        "activation": activation,
        "normalize_input": "true" if normalize_input else "false",
    }
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, meta)


def load_torch_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict from a `.pt`/`.pth` file, with torch.load(weights_only=True)."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a pickled module, not plain tensors: refuse in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HeadMismatch(f"{path}: not a plain tensor state dict ({first})") from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise HeadMismatch(f"{path}: holds a {type(state).__name__}, not a state dict")
    return dict(state)


def load_embedding_head(
    source: str | Path | bytes, expected_model: Mapping[str, Any]
) -> EmbeddingHead:
    t, meta = read_head_file(source)
    if meta.get("kind") != "embedding_mlp":
        raise HeadMismatch(f"not an embedding head (kind {meta.get('kind')!r})")
    check_identity(meta, expected_model)
    n = int(meta["n_layers"])
    act = "relu" if meta.get("activation") == "relu" else "none"
    weights = [t[f"layers.{k}.weight"] for k in range(n)]
    biases = [t[f"layers.{k}.bias"] for k in range(n)]
    return EmbeddingHead(weights, biases, act, meta.get("normalize_input") == "true", meta)


def apply_embedding_head(head: EmbeddingHead, emb: np.ndarray) -> np.ndarray:
    """Head output in float32: (n,) for a single output, else (n, outputs)."""
    x = np.atleast_2d(np.asarray(emb, dtype=np.float32))
    if head.normalize_input:
        x = l2_rows(x).astype(np.float32)
    for k, (w, b) in enumerate(zip(head.weights, head.biases, strict=True)):
        x = x @ w.T + b
        if head.activation == "relu" and k < len(head.weights) - 1:
            x = np.maximum(x, 0.0)
    return x[:, 0] if x.shape[1] == 1 else x
