"""Dataset cards: README.md files that people and Hugging Face `datasets` can read.

Each partition's card is a file of its version (listed in the manifest) and is copied to
the partition folder after the commit; the dataset's card lists every published partition.
Their YAML front matter names the shard tars of the published versions as `data_files`,
so `datasets.load_dataset(folder)` yields images and captions (WebDataset) rather than the
parquet sidecars. The copies outside the versions are conveniences; readers of record
follow `manifest.json`.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml

from tasks.io import storage
from tasks.publish.catalog import flow_folder, read_catalog

logger = logging.getLogger(__name__)

CARD = "README.md"
WEBDATASET_PIN = "webdataset<=0.2.86"


def _front_matter(configs: list[dict[str, Any]]) -> str:
    data = {"configs": configs, "tags": ["clip-curate", "webdataset"]}
    return "---\n" + yaml.safe_dump(data, sort_keys=False) + "---\n"


def _counts_table(stats: dict[str, Any]) -> str:
    counts = stats.get("counts") or {}
    rows = [f"| {k} | {v} |" for k, v in counts.items()]
    reasons = [f"| {k} | {v} |" for k, v in (stats.get("reasons") or {}).items()]
    out = ["| status | count |", "|---|---:|", *rows]
    if reasons:
        out += ["", "| reason | count |", "|---|---:|", *reasons]
    return "\n".join(out)


def _languages_section(stats: dict[str, Any]) -> list[str]:
    """Worldwide balancing: every metadata language and its threshold in this partition."""
    bal = stats.get("balance") or {}
    if bal.get("mode") != "worldwide":
        return []
    langs = bal.get("languages") or {}
    p, source = bal.get("tail_fraction"), bal.get("tail_fraction_from")
    rows = []
    for code in bal.get("metadata_languages") or []:
        row = langs.get(code) or {}
        t = row.get("t")
        rows.append(f"| {code} | {'–' if t is None else t} | {row.get('captions', 0)} |")
    how = f"from English's t = {bal.get('t')}" if source == "t" else "configured"
    return [
        "## Metadata languages",
        "",
        f"Balanced per language (MetaCLIP 2): tail fraction {p} ({how}); t_L is each "
        "language's threshold (– : no caption of it matched here).",
        "",
        "| metadata language | t_L | captions |",
        "|---|---:|---:|",
        *rows,
        "",
    ]


def _dedup_lines(manifest: dict[str, Any]) -> list[str]:
    """What dedup removed (pool only): people reading a card ask whether copies are in."""
    if manifest.get("flow") != "pool":
        return []
    dedup = ((manifest.get("config") or {}).get("pool") or {}).get("dedup")
    if not dedup:
        return ["- dedup: off (`pool.dedup: false`): copies of an image are all kept"]
    methods = ["exact (same image bytes)"] if dedup.get("exact") else []
    if perceptual := dedup.get("perceptual"):
        methods.append(f"perceptual (pHash distance <= {perceptual['max_distance']})")
    if semantic := dedup.get("semantic"):
        methods.append(f"semantic (cosine >= {semantic['threshold']})")
    scope = "this partition" if dedup.get("scope") == "partition" else "the dataset so far"
    what = ", ".join(methods) or "no method enabled"
    return [f"- dedup: {what} within {scope}; copies are `duplicate` in samples.parquet"]


def partition_card(manifest: dict[str, Any], stats: dict[str, Any]) -> str:
    """The card of one published partition (paths relative to the partition folder)."""
    flow, version = manifest["flow"], manifest["version"]
    dataset, partition = manifest["dataset"], manifest["partition"]
    shards = f"{version}/shards/*.tar"
    model = manifest.get("model") or {}
    config = {"config_name": "default", "data_files": [{"split": "train", "path": shards}]}
    what = (
        "image-text pairs (`.jpg`/`.png`/... original bytes, `.txt` caption, `.json` metadata)"
        if flow == "pool"
        else "near-miss event clips (`.mp4`, `.jpg` peak frame, `.json` event metadata)"
    )
    return "\n".join(
        [
            _front_matter([config]),
            f"# {dataset} / {flow} / {partition}",
            "",
            f"Curated by clip-curate ({manifest.get('code_version')}): {what}, published as",
            f"WebDataset shards in `{version}/shards/` with `sizes.json`.",
            "",
            "## How it was made",
            "",
            f"- model: `{model.get('name')}` / `{model.get('pretrained')}`, checkpoint sha256 "
            f"`{model.get('checkpoint_sha256')}`",
            f"- config hash `{manifest.get('config_hash')}`, run key `{manifest.get('run_key')}`",
            f"- {len(manifest.get('inputs') or [])} input files (fingerprints in manifest.json)",
            *_dedup_lines(manifest),
            f"- published {manifest.get('created')}",
            "",
            _counts_table(stats),
            "",
            *_languages_section(stats),
            "## Load it",
            "",
            "```python",
            "import clip_curate as cc  # this project's reader: follows manifest.json",
            "ds = cc.open_dataset('<output>/" + dataset + "')",
            f"loader = ds.torch_dataset('{flow}', start='{partition}', end='{partition}')",
            "```",
            "",
            "```python",
            "import webdataset as wds, glob",
            f"samples = wds.WebDataset(sorted(glob.glob('{shards}')), shardshuffle=False)",
            "```",
            "",
            "```python",
            "from datasets import load_dataset",
            "train = load_dataset('<this folder>', split='train')",
            "```",
            "",
            "open_clip training (`--dataset-type webdataset`): pass the tars with brace notation",
            f"(`{version}/shards/{{000000..00000N}}.tar`); it reads `shards/sizes.json`. Train",
            f"with `{WEBDATASET_PIN}`: open_clip_train 3.3's loader breaks on webdataset >= 0.2.96",
            "(webdataset#384, open_clip#935).",
            "",
        ]
    )


def dataset_card(output: str, dataset: str, so: dict[str, Any] | None) -> str:
    """The card at `{output}/{dataset}`: one config per flow over its published versions."""
    configs, lines = [], []
    for flow in ("pool", "video"):
        files, rows = [], []
        cat = read_catalog(flow_folder(output, dataset, flow), so)  # one read, not one per date
        for name in cat.names():
            version = cat.entries[name].get("version")
            if not version:
                continue
            files.append(f"{flow}/{name}/{version}/shards/*.tar")
            rows.append(f"| {flow} | {name} | {version} |")
        if files:
            name = "default" if flow == "pool" else flow
            configs.append({"config_name": name, "data_files": [{"split": "train", "path": files}]})
            lines += rows
    return "\n".join(
        [
            _front_matter(configs),
            f"# {dataset}",
            "",
            "Curated by clip-curate. Every partition folder has its own card and manifest.",
            "",
            "| flow | partition | version |",
            "|---|---|---|",
            *lines,
            "",
        ]
    )


def publish_cards(final: str, card: str, output: str, dataset: str, so: dict[str, Any]) -> None:
    """Copy a committed partition's card beside its manifest; refresh the dataset's card.

    A failure here is logged, not raised: the partition is already published, and the
    next commit of the dataset writes the cards again.
    """
    try:
        storage.write_bytes(storage.join(final, CARD), card.encode(), so)
        text = dataset_card(output, dataset, so)
        storage.write_bytes(storage.join(output, dataset, CARD), text.encode(), so)
    except OSError as err:
        logger.warning("could not write the dataset cards: %s", err)
