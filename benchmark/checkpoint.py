"""Load a trunk's weights from the checkpoint formats researchers actually have.

Supported containers: a plain torchvision ``state_dict``; ``{"state_dict": ...}`` / ``{"model": ...}``
wrappers (MoCo, DeiT, torchvision references); VISSL ``classy_state_dict`` trunks; DINO-style
``{"teacher": ..., "student": ...}``. Key prefixes ``module.`` (DataParallel/DDP), ``encoder_q.``
(MoCo query encoder), ``backbone.`` (DINO) and ``_feature_blocks.`` (VISSL trunk) are stripped.

Loading is strict: a trunk key that is missing, an unexpected key that is not a known head, or a
shape mismatch is an error that lists the keys, because silently keeping random weights produces
plausible-looking but meaningless benchmark numbers.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .models.backbone import Architecture

PREFIXES = ("module.", "encoder_q.", "backbone.", "_feature_blocks.", "trunk.", "encoder.")
# Keys of heads that sit next to the trunk in self-supervised checkpoints; dropped on purpose.
HEAD_PREFIXES = ("encoder_k.", "head.", "heads.", "projector.", "predictor.", "queue", "prototypes.")


def _torch_detail(message: str) -> str:
    """The part of torch's loading error that describes the file, without its advice: that advice
    (re-run torch.load with weights_only=False) would execute whatever the file holds."""
    text = message.split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    return (lines[0] if lines else "")[:200]


def pickled_objects_message(path: Path, refused: str) -> str:
    """What to do with a checkpoint that holds Python objects besides tensors."""
    return (
        f"checkpoint {path} holds pickled Python objects ({refused}), not only tensors. Unpickling them can run "
        f"arbitrary code, so ssl-bench (which reads checkpoints with torch.load(weights_only=True)) will not "
        f"execute them. Re-save only the tensors: in an environment you trust, load the file with the code that "
        f"wrote it and save the network's state dict, "
        f"torch.save(model.state_dict(), '{path.with_name(path.stem + '-weights.pth')}'), then set the model's "
        f"'path' to the new file."
    )


def read_checkpoint(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (set the model's 'path' to a .pth/.pt/.torch file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch raises the same error for a refused Python object and for bytes it cannot parse;
        # only the former names a GLOBAL (the class or function it refused to import)
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if refused is not None:
            raise CheckpointError(pickled_objects_message(path, refused.group(1))) from exc
        raise CheckpointError(
            f"checkpoint {path} cannot be read as tensors: it is corrupt, truncated, or not a PyTorch checkpoint "
            f"(unpickling stopped at: {_torch_detail(str(exc)) or type(exc).__name__}). If it is a plain pickle "
            f"of Python objects, re-save only the tensors with torch.save(model.state_dict(), path) in an "
            f"environment you trust"
        ) from exc
    except Exception as exc:  # corrupt or truncated file: torch raises several types
        raise CheckpointError(f"checkpoint {path} cannot be read (corrupt, truncated or not a PyTorch "
                              f"checkpoint): {type(exc).__name__}: {_torch_detail(str(exc))}") from exc


def unwrap_state_dict(obj: object, which: str = "teacher") -> tuple[dict[str, torch.Tensor], str]:
    """Find the tensor dict inside a checkpoint container; returns it and the path taken."""
    path = []
    while isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, "/".join(path) or "<root>"
        if "classy_state_dict" in obj:  # VISSL
            obj = obj["classy_state_dict"]["base_model"]["model"]["trunk"]
            path.append("classy_state_dict/base_model/model/trunk")
            continue
        for key in (which, "state_dict", "model", "teacher", "student", "network", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                path.append(key)
                break
        else:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:  # e.g. state_dict plus scalar metadata at the same level
                return tensors, "/".join(path) or "<root>"
            raise CheckpointError(
                f"no tensor dict found in the checkpoint at '{'/'.join(path) or '<root>'}'; "
                f"keys there: {sorted(obj)[:20]}"
            )
    raise CheckpointError(f"checkpoint content is a {type(obj).__name__}, expected a dict of tensors")


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value
    return out


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_trunk_weights(model: nn.Module, arch: Architecture, path: str | Path, which: str = "teacher") -> dict:
    """Load the checkpoint at ``path`` into ``model``'s trunk; returns a provenance dict."""
    raw, container = unwrap_state_dict(read_checkpoint(path), which=which)
    state = strip_prefixes(raw)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(arch.head_prefixes)}
    ignored = sorted(k for k in state if k.startswith(arch.head_prefixes + HEAD_PREFIXES))
    trunk = {k: v for k, v in state.items() if k not in ignored}

    missing = sorted(set(expected) - set(trunk))
    unexpected = sorted(set(trunk) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(trunk[k].shape)} vs {arch.name} {tuple(expected[k].shape)}"
        for k in sorted(set(trunk) & set(expected)) if trunk[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {path} (read from '{container}') does not match architecture {arch.name}:"]
        if missing:
            parts.append(f"  {len(missing)} trunk key(s) missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if mismatched:
            parts.append(f"  {len(mismatched)} shape mismatch(es): {_listing(mismatched, 6)}")
        parts.append("  Nothing was loaded; check the model's 'arch', or re-save the trunk with torchvision key names.")
        raise CheckpointError("\n".join(parts))
    head_state = {k: v for k, v in model.state_dict().items() if k.startswith(arch.head_prefixes)}
    model.load_state_dict({**head_state, **trunk}, strict=True)
    return {"checkpoint": str(path), "container": container, "ignored_head_keys": len(ignored)}
