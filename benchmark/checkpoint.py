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

import hashlib

import math
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .models.backbone import Architecture

PREFIXES = ("module.", "encoder_q.", "backbone.", "_feature_blocks.", "trunk.", "encoder.", "base_encoder.")
# Keys of heads that sit next to the trunk in self-supervised checkpoints; dropped on purpose
# (momentum_encoder.: MoCo v3's key encoder).
HEAD_PREFIXES = ("encoder_k.", "head.", "heads.", "projector.", "predictor.", "queue", "prototypes.",
                 "momentum_encoder.")


def _torch_detail(message: str) -> str:
    """The part of torch's loading error that describes the file, without its advice: that advice
    (re-run torch.load with weights_only=False) would execute whatever the file holds."""
    text = message.split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    return (lines[0] if lines else "")[:200]


def pickled_objects_message(path: Path, refused: str) -> str:
    """What to do with a checkpoint that holds Python objects besides tensors. A training dict whose
    only such object is an argparse.Namespace (DINO's, MoCo's 'args') can be re-saved without
    running any pickled code: torch's safe_globals admits that one class."""
    new = path.with_name(path.stem + "-weights.pth")
    if refused == "argparse.Namespace":
        return (
            f"checkpoint {path} holds pickled Python objects ({refused}: the 'args' entry that DINO, MoCo and most "
            f"training scripts save), not only tensors, and ssl-bench reads checkpoints with "
            f"torch.load(weights_only=True). Re-save its dicts of tensors, admitting only that class: "
            f"import argparse, torch; with torch.serialization.safe_globals([argparse.Namespace]): "
            f"ckpt = torch.load('{path}'); then torch.save({{k: v for k, v in ckpt.items() if isinstance(v, dict)}}, "
            f"'{new}'), and set the model's 'path' to the new file."
        )
    return (
        f"checkpoint {path} holds pickled Python objects ({refused}), not only tensors. Unpickling them can run "
        f"arbitrary code, so ssl-bench (which reads checkpoints with torch.load(weights_only=True)) will not "
        f"execute them. Re-save only the tensors: in an environment you trust, load the file with the code that "
        f"wrote it and save the network's state dict, "
        f"torch.save(model.state_dict(), '{new}'), then set the model's 'path' to the new file."
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _select_prefix(raw: dict[str, torch.Tensor], prefix: str, path) -> tuple[dict[str, torch.Tensor], int]:
    """The keys under ``prefix`` with it removed (a Lightning module's 'model.backbone.'), and how
    many other keys (heads, projectors, optimiser-side modules) were left out."""
    kept = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    if not kept:
        starts = sorted({k.split(".", 1)[0] + "." for k in raw})
        raise CheckpointError(f"checkpoint {path}: no key starts with prefix '{prefix}' (the model's 'prefix' "
                              f"option); its keys start with {_listing(starts, 8)}")
    return kept, len(raw) - len(kept)


def _prefix_hint(keys, expected) -> str:
    """Where the checkpoint's keys are the architecture's under a prefix no rule strips (e.g.
    'model.backbone.'), the 'prefix' option that would load them."""
    counts: dict[str, int] = {}
    for key in keys:
        for name in expected:
            if key.endswith(name) and len(key) > len(name) and key[-len(name) - 1] == ".":
                counts[key[: -len(name)]] = counts.get(key[: -len(name)], 0) + 1
    if not counts:
        return ""
    prefix, found = max(counts.items(), key=lambda item: (item[1], -len(item[0])))
    if found < len(expected) / 2:
        return ""
    return (f" {found} of the {len(expected)} trunk keys are there under '{prefix}': set the model's option "
            f"prefix: '{prefix}'.")


def _depth_hint(keys, expected) -> str:
    """A ViT checkpoint with fewer or more blocks than the architecture: the depth that fits."""
    def blocks(names):
        return {int(m.group(1)) for m in map(re.compile(r"^blocks\.(\d+)\.").match, names) if m}

    have, want = blocks(keys), blocks(expected)
    if not have or not want or have == want:
        return ""
    return (f" The checkpoint has blocks {min(have)}-{max(have)}, the architecture {min(want)}-{max(want)}: "
            f"add [depth={max(have) + 1}] to the arch name, e.g. timm/vit_small_patch16_224[depth={max(have) + 1}].")


def load_trunk_weights(model: nn.Module, arch: Architecture, path: str | Path, which: str = "teacher",
                       prefix: str | None = None) -> dict:
    """Load the checkpoint at ``path`` into ``model``'s trunk; returns a provenance dict. ``prefix``:
    take only the keys under it, without it (the keys of a module inside a training wrapper)."""
    content, config = read_weights(path)
    raw, container = unwrap_state_dict(content, which=which)
    left_out = 0
    if prefix:
        raw, left_out = _select_prefix(raw, prefix, path)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(arch.head_prefixes)}
    notes: list[str] = []
    if arch.feature_maps is not None and any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in raw):
        state = raw  # Hugging Face names: mapped as a whole ("encoder." is part of them)
    else:
        state = strip_prefixes(raw)
    if arch.feature_maps is not None:  # timm family
        state, notes = timm_layout(state, model, expected, config, arch, path)
    ignored = sorted(k for k in state if k.startswith(arch.head_prefixes)
                     or (k.startswith(HEAD_PREFIXES) and k not in expected))
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
        if arch.feature_maps is not None:  # timm family
            advice = (" Nothing was loaded; check the model's 'arch' (timm/<model>[keyword=value,...]) against "
                      "the checkpoint's model." + _depth_hint(trunk, expected))
        else:
            advice = " Nothing was loaded; check the model's 'arch', or re-save the trunk with torchvision key names."
        hint = _prefix_hint(raw, expected) if not prefix and len(set(trunk) & set(expected)) < len(expected) / 2 else ""
        parts.append(" " + (advice + hint).strip())
        raise CheckpointError("\n".join(parts))
    head_state = {k: v for k, v in model.state_dict().items() if k.startswith(arch.head_prefixes)}
    model.load_state_dict({**head_state, **trunk}, strict=True)
    info = {"checkpoint": str(path), "container": container, "ignored_head_keys": len(ignored)}
    if Path(path).is_file():  # which file exactly: a path alone does not say (it can be overwritten)
        info["checkpoint_sha256"] = file_sha256(Path(path))[:16]
    if prefix:
        info.update(checkpoint_prefix=prefix, keys_outside_prefix=left_out)
    return {**info, "layout": notes} if notes else info


# --- timm architectures: the layouts of today's SSL repositories, mapped to timm's key names ---

# Keys of pretraining-only parts, dropped when the timm model has no such key: MAE's decoder and
# mask token, iBOT's masked_embed, DINOv2/v3's mask_token, DINOv3's RoPE periods (recomputed),
# qkv bias masks, local-crop CLS norm and distillation projectors, HF's pooler.
TIMM_PRETRAIN_ONLY = re.compile(r"^(decoder_|mask_token|masked_embed|local_cls_norm|projectors\.|pooler\.|rope_embed\.)"
                                r"|\.periods$|\.bias_mask$")


def _check_in_folder(folder: Path, member: Path) -> None:
    """A file of a checkpoint folder must stay inside it: a symlink pointing elsewhere is refused.
    A Hugging Face cache snapshot (``models--<name>/snapshots/<revision>/``) links its files to
    ``models--<name>/blobs/``: for one, the ``models--<name>`` folder is the bound."""
    bound = folder.resolve()
    if bound.parent.name == "snapshots" and bound.parent.parent.name.startswith("models--"):
        bound = bound.parent.parent
    target = member.resolve()
    if target != bound and bound not in target.parents:
        raise CheckpointError(f"checkpoint folder {folder}: {member.name} is a symlink pointing outside the folder, "
                              f"to {target}; copy the file into {folder} (symlinks are followed only within a "
                              f"Hugging Face cache entry, models--<name>/)")


def read_weights(path: str | Path) -> tuple[object, dict]:
    """A checkpoint as read from disk: a torch file (``weights_only``), a ``.safetensors`` file, or
    a Hugging Face ``save_pretrained`` folder (config.json + model.safetensors / pytorch_model.bin).
    Returns the content and, for a folder, its config.json."""
    path = Path(path)
    if path.is_dir():
        config_path = path / "config.json"
        weights = [path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
        if not config_path.is_file() or not weights:
            raise CheckpointError(f"checkpoint folder {path} is not a Hugging Face save_pretrained folder: it needs "
                                  f"config.json and model.safetensors (or pytorch_model.bin); sharded weights are "
                                  f"not read, re-save with save_pretrained(..., max_shard_size='100GB')")
        import json

        for member in (config_path, weights[0]):
            _check_in_folder(path, member)
        try:
            config = json.loads(config_path.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
        content, _ = read_weights(weights[0])
        return content, config
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read as safetensors (corrupt or truncated): "
                                  f"{exc}") from None
    return read_checkpoint(path), {}


def _hf_vit_to_timm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Hugging Face ViTModel / Dinov2Model names -> timm VisionTransformer names; the separate
    query/key/value projections are concatenated into timm's qkv."""
    base = next(k for k in state if k.endswith("embeddings.patch_embeddings.projection.weight"))
    prefix = base[: -len("embeddings.patch_embeddings.projection.weight")]
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    renames = [
        (r"^embeddings\.cls_token$", "cls_token"), (r"^embeddings\.mask_token$", "mask_token"),
        (r"^embeddings\.register_tokens$", "register_tokens"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^encoder\.layer\.(\d+)\.(layernorm_before|norm1)\.", r"blocks.\1.norm1."),
        (r"^encoder\.layer\.(\d+)\.(layernorm_after|norm2)\.", r"blocks.\1.norm2."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
        (r"^encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
        (r"^encoder\.layer\.(\d+)\.layer_scale(1|2)\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^layernorm\.", "norm."),
    ]
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        split = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", key)
        if split:
            qkv.setdefault((split.group(1), split.group(3)), {})[split.group(2)] = value
            continue
        for pattern, replacement in renames:
            if re.match(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(f"Hugging Face checkpoint: block {block} has only {sorted(parts)} of the "
                                  f"attention's query/key/value {kind}s")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def _check_hf_config(config: dict, arch: Architecture, model: nn.Module, path) -> None:
    """The folder's config.json must describe the timm model the suite names."""
    if not config:
        return
    blocks = getattr(model, "blocks", [])
    expected = {"hidden_size": getattr(model, "embed_dim", None), "num_hidden_layers": len(blocks),
                "patch_size": getattr(getattr(model, "patch_embed", None), "patch_size", (None,))[0]}
    if blocks:
        expected["num_attention_heads"] = getattr(blocks[0].attn, "num_heads", None)
    wrong = [f"{key}={config[key]} (the architecture has {value})" for key, value in expected.items()
             if key in config and value is not None and config[key] != value]
    if wrong:
        raise CheckpointError(f"checkpoint folder {path}: config.json does not describe {arch.name}: "
                              f"{', '.join(wrong)}. Name a timm architecture with these sizes, e.g. "
                              f"timm/vit_base_patch16_224[depth=..., embed_dim=..., num_heads=...]")


def _grid(tokens: int) -> int | None:
    side = math.isqrt(tokens)
    return side if side * side == tokens and side > 0 else None


def timm_layout(state: dict[str, torch.Tensor], model: nn.Module, expected: dict, config: dict,
                arch: Architecture, path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a checkpoint's keys to the timm model's: Hugging Face names, DINOv2 registers and block
    chunks, DINOv3 names (timm's Eva), pretraining-only keys dropped, position embeddings resampled
    to the model's grid. Returns the state and what was done (for provenance)."""
    notes = []
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state):
        _check_hf_config(config, arch, model, path)
        state = _hf_vit_to_timm(state, config)
        notes.append("hugging-face-vit")
    state = {k: v for k, v in state.items() if k in expected or not TIMM_PRETRAIN_ONLY.search(k)}
    chunked = re.compile(r"^blocks\.\d+\.\d+\.")
    if any(chunked.match(k) for k in state) and not any(chunked.match(k) for k in expected):
        state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}  # DINOv2 BlockChunk
        notes.append("dinov2-block-chunks")
    for old in ("register_tokens", "storage_tokens"):
        if old in state and "reg_token" in expected:
            state["reg_token"] = state.pop(old)
            notes.append(f"{old}->reg_token")
    if getattr(model, "no_embed_class", False) and "pos_embed" in state and "cls_token" in state \
            and "pos_embed" in expected and _grid(state["pos_embed"].shape[1]) is None \
            and _grid(state["pos_embed"].shape[1] - 1) is not None:
        # timm's register models (no_embed_class) give the class token no position: the original's
        # class position embedding moves into the class token, which it is added to anyway
        state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
        state["pos_embed"] = state["pos_embed"][:, 1:]
        notes.append("cls-position->cls_token")
    if "blocks.0.gamma_1" in expected:  # timm Eva (DINOv3) names layer scale and the q/v biases its own way
        renamed = {}
        for key, value in state.items():
            key = re.sub(r"\.ls1\.gamma$", ".gamma_1", re.sub(r"\.ls2\.gamma$", ".gamma_2", key))
            if key.endswith("attn.qkv.bias") and key.replace("qkv.bias", "q_bias") in expected:
                q, _, v = value.chunk(3)  # the key bias is fixed at zero in timm's Eva
                renamed[key.replace("qkv.bias", "q_bias")], renamed[key.replace("qkv.bias", "v_bias")] = q, v
                continue
            if key.endswith("attn.qkv.bias") and key not in expected:
                if value.abs().max() > 0:
                    raise CheckpointError(f"checkpoint {path}: {key} is not zero but {arch.name} has no qkv bias; "
                                          f"name the _qkvb variant of the architecture")
                continue  # all-zero biases of distilled DINOv3 models: the bias-free timm model is the same
            renamed[key] = value
        state = renamed
        notes.append("dinov3->eva")
    state = {re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)): v for k, v in state.items()}
    if "pos_embed" in state and "pos_embed" in expected and state["pos_embed"].shape != expected["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        have, want = state["pos_embed"], expected["pos_embed"]
        # tokens with a position embedding before the patches (timm's own rule)
        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        old_grid = _grid(have.shape[1] - prefix)
        new_grid = _grid(want.shape[1] - prefix)
        if old_grid is None or new_grid is None or have.shape[2] != want.shape[2]:
            raise CheckpointError(f"checkpoint {path}: pos_embed {tuple(have.shape)} cannot be resampled to "
                                  f"{arch.name}'s {tuple(want.shape)}")
        state["pos_embed"] = resample_abs_pos_embed(have.float(), (new_grid, new_grid), (old_grid, old_grid),
                                                    num_prefix_tokens=prefix).to(have.dtype)
        notes.append(f"pos_embed {old_grid}x{old_grid}->{new_grid}x{new_grid} (bicubic)")
    return state, notes
