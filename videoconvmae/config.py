"""Typed run configuration: dataclass schema + YAML presets in configs/ + ``key.sub=value`` overrides.

Why OmegaConf: its structured configs validate a dataclass schema on every merge (unknown key, wrong type)
and parse dotted overrides and YAML, which is exactly what we need and nothing more; it is small, typed and
maintained (it is Hydra's core). We do not use Hydra itself: its launcher / working-directory magic would
fight our own CLI and Slurm layer. Each component owns its section (models/config.py, data/config.py, ...);
this module only composes them, loads presets and reports errors in one line.

Presets are YAML files in ``configs/``; a preset may name another as ``_base_`` to start from it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from videoconvmae.artifacts import atomic_write
from videoconvmae.data.config import DataConfig
from videoconvmae.engine.config import OptimConfig, TrainConfig
from videoconvmae.errors import ConfigError
from videoconvmae.eval.config import EvalConfig
from videoconvmae.launch.config import SlurmConfig
from videoconvmae.models.config import ModelConfig
from videoconvmae.task import Task

# keys that were replaced: a preset or override using one gets a line naming the new key
REPLACED_KEYS = {
    "model.norm_pix_loss": "model.loss_target (mae = the old norm_pix_loss: true, pixel = false; videomae)",
}
REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_KEY = "_base_"


@dataclass
class Config:
    task: str = "pretrain"  # pretrain | finetune | linprobe | eval
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture, masking, loss
    data: DataConfig = field(default_factory=DataConfig)  # dataset, decoding, sampling, augmentation
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and learning-rate schedule
    train: TrainConfig = field(default_factory=TrainConfig)  # loop, precision, checkpoints, logging
    eval: EvalConfig = field(default_factory=EvalConfig)  # multi-view evaluation protocol
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # cluster resources (launch only)

    def __post_init__(self) -> None:
        Task.parse(self.task)
        data = self.data  # sizes no model accepts fail here (also in `config show`), not after [start]
        frames = (data.num_segments or data.num_frames) if data.dataset == "ssv2" else data.num_frames
        self.model.check_input(data.input_size, None if data.dataset == "imagefolder" else frames)


def config_dirs() -> list[Path]:
    """Where preset names are looked up: $VIDEOCONVMAE_CONFIGS, ./configs, then the repository's configs/."""
    dirs = [Path(p) for p in os.environ.get("VIDEOCONVMAE_CONFIGS", "").split(os.pathsep) if p]
    candidates = [*dirs, Path.cwd() / "configs", REPO_ROOT / "configs"]
    return list(dict.fromkeys(p.resolve() for p in candidates))


def list_presets() -> list[str]:
    names = {p.stem for d in config_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def find_preset(name: str) -> Path:
    """A preset name (``pretrain_k400_base``) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for d in config_dirs():
        candidate = d / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config preset {name!r} not found (looked in {', '.join(str(d) for d in config_dirs())})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (line "
                                                        f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The chain of YAML dicts from the root ``_base_`` down to ``path``."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    chain: list[tuple[Path, dict]] = []
    base = data.pop(BASE_KEY, None)
    if base:
        base_path = find_preset(base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            base_path = path.parent / f"{base}.yaml"
        chain = _read_preset(base_path, (*seen, path.resolve()))
    return [*chain, (path, data)]


def _one_line(err: OmegaConfBaseException, source: str) -> str:
    """OmegaConf errors are multi-line with full_key / object_type; keep what names the key and the problem."""
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0].strip()
    msg = re.sub(r"\s+", " ", msg)
    if "Key '" in msg and "not in" in msg and key in REPLACED_KEYS:
        return f"{source}: '{key}' was replaced by {REPLACED_KEYS[key]}"
    if "Key '" in msg and "not in" in msg:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        schema = _section_fields(parent)
        hint = f" (valid keys{' in ' + parent if parent else ''}: {', '.join(schema)})" if schema else ""
        return f"{source}: unknown config key '{key}'{hint}"
    return f"{source}: bad value for '{key}': {msg}" if key else f"{source}: {msg}"


def _section_fields(dotted: str) -> list[str]:
    """Field names of the config section at ``dotted`` ('' = top level), for error hints."""
    node: Any = Config()
    for part in [p for p in dotted.split(".") if p]:
        node = getattr(node, part, None)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, value = text.split("=", 1)
    return key.strip(), value


def preset_layers(preset: str) -> list[tuple[str, dict]]:
    """The preset's ``_base_`` chain as (source, dict) layers, root first."""
    return [(str(path), data) for path, data in _read_preset(find_preset(preset))]


def merge_layers(layers: list[tuple[str, dict]], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults <- each (source, dict) layer <- ``key.sub=value`` overrides; validated dataclasses.
    Errors are one line naming the layer's source or the override."""
    merged = OmegaConf.structured(Config)
    for source, data in layers:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except OmegaConfBaseException as e:
            raise ConfigError(_one_line(e, source)) from None
    for text in overrides:
        key, value = parse_override(text)
        # `key=` means '' for a string field (e.g. model.pretrained=) and None for an optional one
        candidates = [f"{key}=''", f"{key}=null"] if value.strip() == "" else [f"{key}={value}"]
        for i, dotted in enumerate(candidates):
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([dotted]))
                break
            except OmegaConfBaseException as e:
                if i == len(candidates) - 1:
                    raise ConfigError(_one_line(e, f"override {text!r}")) from None
    try:
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError, TypeError) as e:
        msg = _one_line(e, "config") if isinstance(e, OmegaConfBaseException) else f"config: {e}"
        raise ConfigError(msg) from None


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                task: str | None = None) -> Config:
    """Schema defaults <- preset chain <- ``task`` <- overrides; validated; returned as dataclasses."""
    layers = preset_layers(preset) if preset else []
    if task is not None:
        layers.append(("task", {"task": task}))
    return merge_layers(layers, overrides)


def field_docs(cls: type) -> dict[str, str]:
    """``{field: meaning}`` of a config dataclass: the ``# ...`` comment on each field's line (the convention
    every config section follows, so the meaning lives in one place: beside the field)."""
    import inspect
    import io
    import tokenize

    names = {f.name for f in dataclasses.fields(cls)}
    lines = inspect.getsource(cls).splitlines(keepends=True)
    docs: dict[str, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type == tokenize.COMMENT:
            match = re.match(r"\s+(\w+)\s*:", lines[tok.start[0] - 1])
            if match and match.group(1) in names and match.group(1) not in docs:
                docs[match.group(1)] = tok.string.lstrip("#").strip()
    return docs


def describe_config(cfg: Any) -> str:
    """The resolved config as YAML with, after every key, ``# <type>: <meaning>`` (``config show --doc``)."""
    lines: list[str] = []

    def walk(node: Any, indent: str) -> None:
        docs = field_docs(type(node))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:  # {docs.get(f.name, '')}")
                walk(value, indent + "  ")
            else:
                text = yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()
                lines.append(f"{indent}{f.name}: {text}  # {type_name}: {docs.get(f.name, '')}")

    walk(cfg, "")
    return "\n".join(lines) + "\n"


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """``cfg`` with ``key.sub=value`` overrides on top (validated as a preset's are)."""
    return merge_layers([("config", to_dict(cfg))], overrides)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _upgrade_saved(data: dict) -> dict:
    """A config saved before issue 16 (it has ``model.norm_pix_loss``; saved configs hold every key) in today's
    keys, meaning what it meant then: norm_pix_loss true / false = loss_target mae / pixel, a fixed position
    table, the transformer-style init, bilinear resizing, num_segments 0 = unset, ssv2 segment-sampled in every
    mode (so its sampling_rate was never read) and never flipped."""
    model = data.get("model")
    if not (isinstance(model, dict) and "norm_pix_loss" in model):
        return data
    model = dict(model)
    model.setdefault("loss_target", "mae" if model.pop("norm_pix_loss") else "pixel")
    model.setdefault("pos_embed", "fixed")
    model.setdefault("conv_init", "transformer")
    old = dict(data.get("data") or {})
    old.setdefault("interpolation", "bilinear")
    if old.get("num_segments") == 0:
        old["num_segments"] = None
    if old.get("dataset") == "ssv2":
        old.setdefault("sampling", "segment")
        old["sampling_rate"], old["flip"] = None, None
    return {**data, "model": model, "data": old}


def from_dict(data: dict) -> Config:
    """Rebuild a Config from a saved dict (e.g. inside a checkpoint), with the same validation; configs saved
    before a key was replaced are upgraded (``_upgrade_saved``)."""
    data = _upgrade_saved(data)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data)))
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e, "saved config")) from None


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically)."""
    return atomic_write(path, to_yaml(cfg))


def code_version() -> str:
    """Package version plus the git commit (and '+dirty') when run from a checkout."""
    from videoconvmae import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__
