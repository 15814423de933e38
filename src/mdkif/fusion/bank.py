"""A skill bank: K trained adapters read straight from their peft files, as exact low-rank deltas.

Each adapted layer of skill i contributes `dW_i = B_i diag(E_i) A_i * s_i` (AdaLoRA's SVD form; plain
LoRA is the same with E = 1). We read `adapter_model.safetensors` and `adapter_config.json` ourselves
instead of loading K peft adapters, because peft cannot combine AdaLoRA adapters (`add_weighted_adapter`
refuses them) and its `linear` combination weights A and B separately, which is not a weighted sum of
deltas.

The scale follows peft's `SVDLinear` (peft 0.21, `tuners/adalora/layer.py`): `scaling / (ranknum + 1e-5)`
with `scaling = lora_alpha` (or `init_r` when alpha <= 0) and `ranknum = init_r`. On save peft drops the
triplets the rank allocator masked (`rank_pattern`) but, on load, keeps `ranknum` at `init_r`; so the
scale divides by `init_r`, never by the kept rank. Triplets masked but still saved (a save before the
final allocation) have E = 0 and add nothing. A layer whose every triplet was pruned is saved with rank 0.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
SKILLS_MANIFEST = "skills.json"
TRAINING_METRICS = "metrics.json"  # written beside each adapter by the skills stage
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[ABE])(?:\.weight)?(?:\.default)?$"
)


class FusionError(ValueError):
    """An adapter cannot be read or does not fit the base model; the message names the file."""


@dataclass(frozen=True)
class LayerDelta:
    """One skill's factors for one linear layer: A [r, in], E [r], B [out, r] and the scalar scale."""

    A: torch.Tensor
    E: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense update dW = B diag(E) A * scale, shape [out, in] (the reference the tests compare to)."""
        return (self.B @ (self.A * self.E[:, None])) * self.scale


@dataclass
class SkillAdapter:
    """One skill: its name, where it came from, a content digest and its per-module deltas."""

    name: str
    path: Path
    peft_type: str
    layers: dict[str, LayerDelta]
    digest: str
    config: dict = field(repr=False, default_factory=dict)
    prompt_format: str = "alpaca"  # what it was trained on (metrics.json); adapters from elsewhere: alpaca

    @property
    def ranks(self) -> dict[str, int]:
        return {m: d.rank for m, d in self.layers.items()}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def _scale(cfg: dict, module: str, rank: int, peft_type: str) -> float:
    alpha = float(cfg.get("lora_alpha", 8))
    if peft_type == "ADALORA":
        init_r = float(cfg["init_r"])
        # Same arithmetic as peft: float32 ranknum plus 1e-5.
        ranknum = torch.tensor(init_r, dtype=torch.float32) + 1e-5
        return float((alpha if alpha > 0 else init_r) / ranknum)
    # Plain LoRA: per-module rank / alpha patterns match on the module name's suffix.
    r = int(cfg.get("r", rank))
    for pattern, value in (cfg.get("rank_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            r = int(value)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            alpha = float(value)
    return alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r


def load_skill(path: str | Path, name: str | None = None) -> SkillAdapter:
    """Read one peft adapter folder (AdaLoRA or plain LoRA) into exact per-module factors, on the CPU in fp32."""
    folder = Path(path)
    cfg_path, w_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise FusionError(
            f"{folder}: not a peft adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
        )
    cfg = json.loads(cfg_path.read_text())
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type not in ("ADALORA", "LORA"):
        raise FusionError(f"{cfg_path}: peft_type {peft_type!r} is not supported (AdaLoRA or LoRA)")
    if cfg.get("fan_in_fan_out"):
        raise FusionError(f"{cfg_path}: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported")
    if cfg.get("use_dora"):
        raise FusionError(f"{cfg_path}: DoRA adapters are not a low-rank delta and cannot be fused exactly")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(w_path)).items():
        m = _KEY.match(key)
        if m is None:
            raise FusionError(f"{w_path}: unexpected tensor {key!r} (modules_to_save/bias are not fusable)")
        parts.setdefault(m["module"], {})[m["part"]] = tensor.detach().to(torch.float32)
    layers: dict[str, LayerDelta] = {}
    for module, p in sorted(parts.items()):
        if "A" not in p or "B" not in p:
            raise FusionError(f"{w_path}: module {module!r} lacks lora_A or lora_B")
        rank = p["A"].shape[0]
        E = p["E"].reshape(-1) if "E" in p else torch.ones(rank)
        if p["B"].shape[1] != rank or E.numel() != rank:
            raise FusionError(f"{w_path}: module {module!r} has inconsistent ranks")
        if rank == 0:
            continue  # every triplet pruned by the rank allocator: no update at all
        layers[module] = LayerDelta(
            p["A"].contiguous(), E.contiguous(), p["B"].contiguous(), _scale(cfg, module, rank, peft_type)
        )
    return SkillAdapter(
        name or folder.name, folder, peft_type, layers, _digest(folder), cfg, _trained_format(folder)
    )


def _trained_format(folder: Path) -> str:
    """The prompt format the skills stage recorded in the adapter's metrics.json (alpaca when absent)."""
    path = folder / TRAINING_METRICS
    try:
        meta = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise FusionError(f"{path}: not valid JSON ({exc})") from exc
    return str(meta.get("prompt_format", "alpaca")) if isinstance(meta, dict) else "alpaca"


@dataclass
class SkillBank:
    """K skills over one base model. Order matters: weight i always belongs to `names[i]`."""

    skills: list[SkillAdapter]
    manifest_digest: str | None = None
    base_model: str | None = None

    def __post_init__(self) -> None:
        if not self.skills:
            raise FusionError("a skill bank needs at least one skill")
        names = self.names
        if len(set(names)) != len(names):
            raise FusionError(f"duplicate skill names in {names}")
        formats = {s.name: s.prompt_format for s in self.skills}
        if len(set(formats.values())) > 1:
            raise FusionError(
                f"skills trained on different prompt formats cannot be mixed: {formats} "
                "(retrain them with one `prompt_format`)"
            )

    @property
    def prompt_format(self) -> str:
        """The prompt format every skill was trained on: routers, the harness and Serve must show it."""
        return self.skills[0].prompt_format

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.skills]

    @property
    def digests(self) -> dict[str, str]:
        return {s.name: s.digest for s in self.skills}

    def __len__(self) -> int:
        return len(self.skills)

    def modules(self) -> list[str]:
        """Every module some skill adapts (a skill that does not adapt a module contributes zero there)."""
        return sorted({m for s in self.skills for m in s.layers})

    @classmethod
    def from_paths(cls, paths: dict[str, str | Path] | list[str | Path]) -> SkillBank:
        """Load skills from explicit adapter folders (`{name: folder}` or folders named after their skill)."""
        items = paths.items() if isinstance(paths, dict) else [(Path(p).name, p) for p in paths]
        return cls([load_skill(p, name) for name, p in items])

    @classmethod
    def from_dir(cls, root: str | Path, names: list[str] | None = None) -> SkillBank:
        """Load `root/<skill>/` adapters, in `names` order, else the manifest's order, else sorted folder order.

        When `root/skills.json` (the skills stage's manifest) exists, its digest is recorded so a router
        artifact can say exactly which trained skills it was fitted on.
        """
        root = Path(root)
        if not root.is_dir():
            raise FusionError(
                f"{root}: skills folder not found (train skills first: `mdkif skills train ...`)"
            )
        manifest_digest = base = None
        found = sorted(p.name for p in root.iterdir() if (p / ADAPTER_CONFIG).is_file())
        if (root / SKILLS_MANIFEST).is_file():
            raw = (root / SKILLS_MANIFEST).read_bytes()
            manifest_digest = hashlib.sha256(raw).hexdigest()[:16]
            manifest = json.loads(raw)
            base = manifest.get("base_model") if isinstance(manifest, dict) else None
            if isinstance(base, dict):
                base = base.get("name") or json.dumps(base, sort_keys=True)
            order = manifest.get("skills") if isinstance(manifest, dict) else None
            if isinstance(order, dict):
                order = list(order)
            if isinstance(order, list) and names is None:
                listed = [o if isinstance(o, str) else o.get("name", o.get("skill")) for o in order]
                names = [n for n in listed if n in found] or None
        names = names or found
        missing = [n for n in names if n not in found]
        if missing:
            raise FusionError(f"{root}: no adapter folder for skill(s) {missing}; found {found}")
        bank = cls([load_skill(root / n, n) for n in names], manifest_digest, base)
        return bank
