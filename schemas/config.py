"""The run configuration: one YAML file, validated by pydantic before any work starts.

Unknown keys are an error (a typo must never silently fall back to a default), and every
message names the offending key and what to write instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_NEAR_MISS_PROMPTS = [
    "a pedestrian suddenly stepping in front of the car",
    "a car cutting in sharply in front of the camera",
    "a cyclist swerving into the path of the vehicle",
    "a near collision on the road",
    "a car braking hard to avoid a crash",
]
DEFAULT_NORMAL_PROMPTS = [
    "a car driving normally on an empty road",
    "traffic moving smoothly on a highway",
    "a quiet street with parked cars",
    "driving on a road with lane markings",
    "a vehicle waiting at a traffic light",
]


class Strict(BaseModel):
    """Base for every config section: unknown keys and credentials are rejected.

    The credential check runs before any other validation (the whole config is checked
    first, so its message names the full path), and again on assignment.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        found = find_credentials(data)
        if found:
            raise CredentialError(found[0].line())
        return data


class ModelConfig(Strict):
    name: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, ge=1, le=65536)


# DataComp's basic filter as our settings (config paths under `pool`); where each rule comes
# from is cited in tasks/pool/quality.py.
BASIC_FILTER: dict[str, dict[str, Any]] = {
    "text_filter": {"languages": ["en"], "min_lang_score": 0.0, "min_words": 3, "min_chars": 6},
    "image_filter": {"min_side": 200, "max_aspect_ratio": 3.0},
}


class TextFilterConfig(Strict):
    enabled: bool = True
    min_words: int = Field(2, ge=0)
    max_chars: int = Field(1000, ge=1)
    min_letter_fraction: float = Field(0.5, ge=0.0, le=1.0)
    max_repeat_fraction: float = Field(0.5, gt=0.0, le=1.0)
    min_words_for_repeat: int = Field(4, ge=2)
    min_chars: int = Field(0, ge=0)  # raw characters, whitespace included (DataComp counts so)
    # fastText lid.176 language codes accepted ([] = every language) and the top-1 score needed
    languages: list[str] = Field(default_factory=list)
    min_lang_score: float = Field(0.0, ge=0.0, le=1.0)
    # a normalised caption (case, whitespace, digits) seen more often than this in the
    # partition, or in more than this fraction of it, is boilerplate; null turns a rule off
    max_caption_repeats: int | None = Field(None, ge=1)
    max_caption_fraction: float | None = Field(None, gt=0.0, le=1.0)


class ImageFilterConfig(Strict):
    """Size and shape rules, judged on the original size where the pool records it
    (img2dataset's original_width/height, as DataComp does), else on the decoded image."""

    min_side: int | None = Field(None, ge=1)
    max_aspect_ratio: float | None = Field(None, ge=1.0)


class PerceptualDedupConfig(Strict):
    max_distance: int = Field(4, ge=0, le=32)


class SemanticDedupConfig(Strict):
    threshold: float = Field(0.95, gt=0.0, le=1.0)
    nprobe: int = Field(8, ge=1, le=4096)  # coarse lists a cross-night lookup probes


class DedupConfig(Strict):
    exact: bool = True
    perceptual: PerceptualDedupConfig | None = Field(default_factory=PerceptualDedupConfig)
    semantic: SemanticDedupConfig | None = None
    scope: Literal["partition", "dataset"] = "partition"
    keep: Literal["best_score", "first"] = "best_score"


# what a pool without a `dedup` section (or with `dedup: true`) removes: exact copies only
DEFAULT_DEDUP: dict[str, Any] = {"exact": True, "perceptual": None, "semantic": None}


class HeadConfig(Strict):
    path: str
    min: float | None = None
    max: float | None = None


class ClipFilterConfig(Strict):
    threshold: float | None = None
    top_fraction: float | None = Field(None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_mode(self) -> ClipFilterConfig:
        if self.threshold is not None and self.top_fraction is not None:
            raise ValueError("set either threshold or top_fraction, not both")
        return self


# a language code as the identifier gives it and as a metadata file is named: `zh`, `zh-Hant`
LANGUAGE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


class BalanceConfig(Strict):
    """MetaCLIP balancing. `metadata` is one list (English-only, `specs/metaclip.md`) or a
    folder of `{code}.json[.gz]` lists (worldwide, `specs/metaclip-worldwide.md`), where `t`
    is English's threshold, or `tail_fraction` sets every language's tail share directly,
    and `languages` maps language-identifier codes to metadata codes (identity for codes it
    does not name; null: that code matches nothing)."""

    metadata: str
    t: int | None = Field(None, ge=1)  # 20000 unless tail_fraction is set
    tail_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    languages: dict[str, str | None] | None = None
    seed: int = 0
    order: Literal["after_filters", "before_filters"] = "after_filters"
    running_counts: bool = False

    @model_validator(mode="after")
    def _t_or_tail_fraction(self) -> BalanceConfig:
        if self.t is not None and self.tail_fraction is not None:
            raise ValueError("set either t (English's threshold) or tail_fraction, not both")
        if self.t is None and self.tail_fraction is None:
            object.__setattr__(self, "t", 20000)
        return self

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, v: dict[str, str | None] | None) -> dict[str, str | None] | None:
        for code in [*(v or {}), *(c for c in (v or {}).values() if c is not None)]:
            if not LANGUAGE_CODE.fullmatch(code):
                raise ValueError(f"language code {code!r}: use letters, digits, '-' or '_'")
        return v


class ShardConfig(Strict):
    max_samples: int = Field(10000, ge=1)


class PoolConfig(Strict):
    input: str | list[str]
    format: Literal["auto", "webdataset", "parquet"] = "auto"
    image_column: str = "image"
    caption_column: str = "caption"
    uid_column: str | None = "uid"
    text_filter: TextFilterConfig = Field(default_factory=TextFilterConfig)
    image_filter: ImageFilterConfig = Field(default_factory=ImageFilterConfig)
    # DataComp's basic filter in one line (BASIC_FILTER above): English, >= 3
    # words, >= 6 characters, short side >= 200 px, aspect ratio <= 3; it overrides those keys
    basic_filter: bool = False
    clip_filter: ClipFilterConfig = Field(default_factory=ClipFilterConfig)
    # on by default for exact copies (same image bytes in the partition), as users of
    # img2dataset/DataComp pipelines expect; a `dedup:` section configures every method,
    # `dedup: false` (or null) turns it off
    dedup: DedupConfig | None = Field(default_factory=lambda: DedupConfig(**DEFAULT_DEDUP))
    heads: dict[str, HeadConfig] = Field(default_factory=dict)
    balance: BalanceConfig | None = None
    shard: ShardConfig = Field(default_factory=ShardConfig)
    max_image_pixels: int = Field(89_478_485, ge=1)
    # source json fields (img2dataset's, DataComp's) copied into samples.parquet columns;
    # every source field is carried into the published sample's json regardless
    passthrough: list[str] = Field(
        default_factory=lambda: ["url", "original_width", "original_height", "sha256"]
    )

    @field_validator("dedup", mode="before")
    @classmethod
    def _dedup_switch(cls, v: Any) -> Any:
        if v is False:
            return None
        return dict(DEFAULT_DEDUP) if v is True else v

    @model_validator(mode="after")
    def _basic_filter(self) -> PoolConfig:
        if self.basic_filter:
            for section, values in BASIC_FILTER.items():
                for key, value in values.items():
                    value = list(value) if isinstance(value, list) else value  # no shared lists
                    object.__setattr__(getattr(self, section), key, value)
            object.__setattr__(self.text_filter, "enabled", True)
        return self

    @model_validator(mode="after")
    def _head_names(self) -> PoolConfig:
        from schemas.tables import SAMPLES, SCORES

        taken = {*SAMPLES, *SCORES, *self.passthrough, "partition"}  # partition: the reader's
        for name in self.heads:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
                raise ValueError(f"head name {name!r}: use a-z, 0-9, '_' (it becomes a column)")
            if name in taken:
                raise ValueError(f"head name {name!r} is already a samples.parquet column")
        return self


class PromptsConfig(Strict):
    near_miss: list[str] = Field(default_factory=lambda: list(DEFAULT_NEAR_MISS_PROMPTS))
    normal: list[str] = Field(default_factory=lambda: list(DEFAULT_NORMAL_PROMPTS))

    @field_validator("near_miss", "normal")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v or any(not p.strip() for p in v):
            raise ValueError("give at least one non-empty prompt")
        return v


class EventsConfig(Strict):
    """Event detector defaults (documented in docs/video.md)."""

    median_window: int = Field(3, ge=1)
    ema_alpha: float = Field(0.5, gt=0.0, le=1.0)
    start: float = Field(0.6, ge=0.0, le=1.0)
    stop: float = Field(0.4, ge=0.0, le=1.0)
    min_duration_s: float = Field(0.5, ge=0.0)
    merge_gap_s: float = Field(1.5, ge=0.0)
    max_duration_s: float = Field(10.0, gt=0.0)
    nms_window_s: float = Field(2.0, ge=0.0)
    clip_before_s: float = Field(5.0, ge=0.0)
    clip_after_s: float = Field(3.0, ge=0.0)

    @model_validator(mode="after")
    def _hysteresis(self) -> EventsConfig:
        if self.stop > self.start:
            raise ValueError(f"stop ({self.stop}) must be <= start ({self.start})")
        return self


class FusionConfig(Strict):
    zero_shot_weight: float = Field(0.8, ge=0.0)
    motion_weight: float = Field(0.2, ge=0.0)
    motion_scale: float = Field(1.0, gt=0.0)
    # weight of the head's probability (`video.head`; ignored without a head)
    head_weight: float = Field(0.8, ge=0.0)
    # weight of the telemetry cue sigmoid((z - telemetry_offset) / telemetry_scale), z the
    # hard-braking / swerve robust z (`tasks.video.telemetry`), on frames their video's
    # telemetry covers only; calm driving (z ~ 0) gives 0.12, a harsh brake (z 4) 0.88
    telemetry_weight: float = Field(1.0, ge=0.0)
    telemetry_offset: float = 2.0
    telemetry_scale: float = Field(1.0, gt=0.0)


class OodConfig(Strict):
    """Out-of-distribution frames (`tasks.video.ood`): scored always, flagged above
    `threshold` (null: never flagged), and flagged frames are left out of event detection.

    `uncertainty_weight` adds the prediction-entropy cue (COOkeD) to the picture statistics;
    it is off by default because it flags every frame whose (ensemble) probability lies in
    0.27-0.73 at weight 0.6, which is most frames of an uncertain zero-shot detector and the
    near misses a head finds where zero-shot disagrees (docs/nearmiss.md).
    """

    threshold: float | None = Field(0.5, ge=0.0, le=1.0)
    uncertainty_weight: float = Field(0.0, ge=0.0, le=1.0)


class VideoConfig(Strict):
    input: str | list[str]
    sample_fps: float = Field(4.0, gt=0.0, le=120.0)
    chunk_frames: int = Field(64, ge=1)
    max_duration_s: float = Field(6 * 3600.0, gt=0.0)
    # a decoder that sends nothing for this long is stopped and its video quarantined
    # `decode_timeout` (decoding runs in helper processes: `tasks.isolation`)
    decode_timeout_s: float = Field(300.0, gt=0.0)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    shard: ShardConfig = Field(default_factory=lambda: ShardConfig(max_samples=100))
    # a GDA head from `curate nearmiss fit` (local path or URL), fused per `fusion.head_weight`
    head: str | None = None
    # the head file's sha256: set by the flow when it plans a run (so it is in the run key
    # and the manifest); pin it yourself to refuse any other file at `head`
    head_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    ood: OodConfig = Field(default_factory=OodConfig)

    @model_validator(mode="after")
    def _pin_needs_head(self) -> VideoConfig:
        if self.head_sha256 is not None and not self.head:
            raise ValueError("head_sha256 pins a head file: set video.head too")
        return self


class ScheduleConfig(Strict):
    pool: str | None = "0 2 * * *"
    video: str | None = "0 3 * * *"
    timezone: str = "UTC"


class RunnerConfig(Strict):
    kind: Literal["threads", "processes", "dask", "ray"] = "threads"
    address: str | None = None
    workers: int | None = Field(None, ge=1)


class GateConfig(Strict):
    """Publish gate: hold a partition whose key figures moved too far from the last one.

    Kept fraction and CLIP score quantiles are compared by absolute difference; events per
    hour relative to the previous partition's (1.0 = may double or drop to zero).
    `override` publishes a partition the gate would hold (`--set gate.override=true`).
    """

    enabled: bool = False
    override: bool = False
    max_kept_fraction_change: float = Field(0.2, ge=0.0, le=1.0)
    max_score_quantile_change: float = Field(0.1, ge=0.0)
    max_events_per_hour_change: float = Field(1.0, ge=0.0)


class CurateConfig(Strict):
    dataset: str = "demo"
    output: str = "./curated"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pool: PoolConfig | None = None
    video: VideoConfig | None = None
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    cache: str | None = None

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '.', '-' only (it becomes a folder)")
        return v


class ConfigError(ValueError):
    """A config problem, already phrased as the one line the user should see."""


# -- credentials ---------------------------------------------------------------------------
# The config is stored by the Prefect server (flow-run and deployment parameters) and written
# to every manifest, so it must never hold a credential. One detector decides, for both the
# refusal at validation (`Strict._no_credentials`, `flows.serve.deployment_parameters`) and
# the masking in `redacted`.

ENV_HINT = (
    "set it in the environment instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
    "AWS_SESSION_TOKEN or a profile, or the store's own environment variables)"
)
MASK = "***"

# a whole word of the name (split at _ - . and camelCase humps: SSECustomerKey -> sse customer key)
_CREDENTIAL_WORDS = frozenset(
    {"key", "keys", "sas", "sig", "pwd", "creds", "auth", "authorization"}
    | {"secret", "secrets", "password", "passwords", "passwd", "passphrase", "token", "tokens"}
    | {"credential", "credentials"}
)
_CREDENTIAL_LAST_WORDS = frozenset({"signature"})  # X-Amz-Signature, not signature_version
# anywhere in the name with separators removed and lower-cased (clientsecret, apikey, ...)
_CREDENTIAL_PARTS = (
    "secret",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "accountkey",
    "sharedkey",
    "customerkey",
    "connectionstring",
    "authorization",
)
# identifiers of key material, not key material (compared with separators removed, lower-case)
_NOT_CREDENTIALS = frozenset({"ssekmskeyid", "kmskeyid", "kmskeyname", "kmskeyarn"})

_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@", re.I)
# name=value pairs of a connection string or query: AccountKey=, Password=, sig=, X-Amz-Signature=
_SETTING = re.compile(r"(?:^|[?&;])\s*([A-Za-z][\w.-]*)\s*=\s*[^&;\s]")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY")
_SAFE_SEGMENT = re.compile(r"[\w-]{1,64}")


class CredentialError(Exception):
    """A credential in the config; the message names where, never what.

    Not a ValueError on purpose: pydantic would wrap one in a ValidationError, whose text
    repeats the input (the secret). `parse_config` turns it into a ConfigError.
    """


@dataclass(frozen=True)
class Credential:
    """Where a credential sits in a config, and why it counts as one (no part of its value)."""

    path: str
    why: str

    def line(self, context: str = "") -> str:
        return f"config: invalid value for '{self.path}': {self.why}; {context}{ENV_HINT}"


def _name_words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_credential_name(name: str) -> bool:
    """Does an option name (of any spelling: snake, kebab, camelCase) name a credential?"""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    if flat in _NOT_CREDENTIALS:
        return False
    words = _name_words(name)
    return (
        any(w in _CREDENTIAL_WORDS for w in words)
        or (bool(words) and words[-1] in _CREDENTIAL_LAST_WORDS)
        or any(part in flat for part in _CREDENTIAL_PARTS)
    )


def embedded_credential(text: str) -> str | None:
    """What kind of credential a string value carries inside it, or None."""
    if _URL_PASSWORD.search(text):
        return "a URL with a password"
    if any(is_credential_name(m.group(1)) for m in _SETTING.finditer(text)):
        return "a key, password or signature setting"
    if _PRIVATE_KEY.search(text):
        return "a private key"
    return None


def _holds_something(value: Any) -> bool:
    """Empty, on/off or numeric values under a credential name carry no secret (`key: null`,
    `max_tokens: 77`)."""
    if value is None or isinstance(value, bool | int | float):  # numbers are never secrets
        return False
    return not (isinstance(value, str | Mapping | list | tuple) and len(value) == 0)


def _show(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _SAFE_SEGMENT.fullmatch(part) else "<key>")
    return out or "<root>"


def _walk(value: Any, path: tuple[str | int, ...]) -> tuple[Any, list[Credential]]:
    """The value with every credential masked, and where they were: one walk for both."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    if isinstance(value, Mapping):
        masked: dict[Any, Any] = {}
        found: list[Credential] = []
        for key, item in value.items():
            name = str(key)
            here = (*path, name)
            if kind := embedded_credential(name):
                masked[MASK if MASK not in masked else f"{MASK}{len(masked)}"] = MASK
                found.append(
                    Credential(_show((*path, "<key>")), f"the key holds a credential ({kind})")
                )
            elif is_credential_name(name) and _holds_something(item):
                masked[key] = MASK
                shown = name if _SAFE_SEGMENT.fullmatch(name) else "<key>"
                found.append(Credential(_show(here), f"'{shown}' looks like a credential"))
            else:
                masked[key], inner = _walk(item, here)
                found += inner
        return masked, found
    if isinstance(value, list | tuple):
        walked = [_walk(item, (*path, i)) for i, item in enumerate(value)]
        return [m for m, _ in walked], [c for _, inner in walked for c in inner]
    if isinstance(value, str) and (kind := embedded_credential(value)):
        return MASK, [Credential(_show(path), f"the value holds a credential ({kind})")]
    return value, []


def find_credentials(data: Any) -> list[Credential]:
    """Every credential in a config (mapping or model), by dotted path, in document order."""
    return _walk(data, ())[1]


def redact(data: Any) -> Any:
    """A copy of `data` with each credential `find_credentials` reports replaced by '***'."""
    return _walk(data, ())[0]


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"config: unknown key '{key}' (check the spelling; see docs/configuration.md)"
    if kind == "missing":
        return f"config: missing required key '{key}'"
    msg = first["msg"].removeprefix("Value error, ")
    return f"config: invalid value for '{key}': {msg}"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=c` overrides; values are parsed as YAML (so 0.3 is a float)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set {item!r}: empty key")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw else "")
    return data


def history_kinds_of(config: dict[str, Any] | None, flow: str) -> list[str]:
    """What a partition of `flow` reads from earlier partitions under a config (as a dict: a
    manifest's, or `model_dump()`): `dedup` (dataset-scope dedup), `counts` (MetaCLIP running
    counts). Empty: it depends on its own inputs only, and dates can run in any order."""
    pool = (config or {}).get("pool") if flow == "pool" else None
    if not isinstance(pool, dict):
        return []
    kinds = []
    dedup, balance = pool.get("dedup"), pool.get("balance")
    if isinstance(dedup, dict) and dedup.get("scope") == "dataset":
        kinds.append("dedup")
    if isinstance(balance, dict) and balance.get("running_counts"):
        kinds.append("counts")
    return kinds


def parse_config(data: dict[str, Any]) -> CurateConfig:
    """Validate a config mapping, turning pydantic's report into one clear line."""
    try:
        return CurateConfig.model_validate(data)
    except CredentialError as err:
        raise ConfigError(str(err)) from None
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> CurateConfig:
    """Read, override and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"config: cannot read {p}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config: {p} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {p} must hold a mapping at the top level")
    return parse_config(apply_overrides(data, overrides or []))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's problem with where it is (1-based line and column, as editors count)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    context = getattr(err, "context", None)
    return f"{where}: {problem}" + (f" ({context})" if context else "")


def config_hash(section: Any) -> str:
    """Stable sha256 of a config section (or any JSON-able value), for cache keys and lineage."""
    if isinstance(section, BaseModel):
        section = section.model_dump(mode="json")
    blob = json.dumps(section, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def redacted(cfg: CurateConfig) -> dict[str, Any]:
    """The resolved config as written to manifests and logs: every credential masked.

    Masks exactly what `find_credentials` reports (one walk does both), so what the config
    refuses and what a manifest hides can never disagree.
    """
    return redact(cfg.model_dump(mode="json"))
