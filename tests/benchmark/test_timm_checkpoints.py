"""Checkpoint layouts of today's SSL repositories, loaded strictly into timm/<model> architectures.

Every checkpoint is written here, in the key naming of the repository it imitates (their
documented save formats), from a randomly initialised timm model A; loading it must give A's
trunk weights back (the oracle), and a missing or extra key must be an error listing the keys.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from benchmark.checkpoint import load_trunk_weights
from benchmark.errors import CheckpointError
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture, trunk_state_dict
from pretrainers.checkpoint import CheckpointFile

VIT = "timm/vit_small_patch16_224[img_size=32,patch_size=8,depth=2,embed_dim=48,num_heads=2]"


def _source(name: str = VIT, seed: int = 7):
    arch = get_architecture(name)
    model = create_model(name, seed=seed)
    return arch, model, trunk_state_dict(arch, model)


def _load(name: str, path, which: str = "teacher"):
    arch = get_architecture(name)
    model = create_model(name, seed=0)
    info = load_trunk_weights(model, arch, path, which=which)
    return model, info


def _assert_same_trunk(arch, model, expected: dict, exact: bool = True) -> None:
    got = trunk_state_dict(arch, model)
    assert sorted(got) == sorted(expected)
    for key in expected:
        if exact:
            assert torch.equal(got[key], expected[key]), key
        else:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6)


def test_timm_state_dict_and_safetensors(tmp_path) -> None:
    arch, source, trunk = _source()
    torch.save(source.state_dict(), tmp_path / "vit.pth")  # timm's own names, classifier included
    model, info = _load(VIT, tmp_path / "vit.pth")
    _assert_same_trunk(arch, model, trunk)
    assert info["ignored_head_keys"] == 2  # head.weight, head.bias
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    model, _ = _load(VIT, tmp_path / "model.safetensors")
    _assert_same_trunk(arch, model, trunk)


def test_dino_and_ibot_teacher_student(tmp_path) -> None:
    # DINO main_dino.py: save_dict = {student (DDP: module.backbone./module.head.), teacher
    # (backbone./head.), optimizer, epoch, args, dino_loss}; iBOT adds the student's masked_embed
    arch, source, trunk = _source()
    _, other, student_trunk = _source(seed=8)
    head = {"head.mlp.0.weight": torch.randn(16, 48), "head.last_layer.weight_g": torch.ones(64, 1),
            "head.last_layer.weight_v": torch.randn(64, 16)}
    teacher = {**{f"backbone.{k}": v for k, v in trunk.items()}, **head}
    student = {**{f"module.backbone.{k}": v for k, v in student_trunk.items()},
               **{f"module.{k}": v for k, v in head.items()}, "module.backbone.masked_embed": torch.zeros(48)}
    torch.save({"student": student, "teacher": teacher, "epoch": 100, "dino_loss": {"center": torch.zeros(1, 64)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}, tmp_path / "dino.pth")
    model, info = _load(VIT, tmp_path / "dino.pth")
    _assert_same_trunk(arch, model, trunk)
    assert info["container"] == "teacher"
    model, info = _load(VIT, tmp_path / "dino.pth", which="student")
    _assert_same_trunk(arch, model, student_trunk)


def test_mae_drops_the_decoder(tmp_path) -> None:
    # MAE main_pretrain.py: {"model": model.state_dict(), "optimizer", "epoch", "scaler"} (its "args"
    # is an argparse Namespace, which weights_only refuses: re-save without it)
    arch, source, trunk = _source()
    mae = {**trunk, "mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, 48),
           "decoder_pos_embed": torch.zeros(1, 17, 32), "decoder_blocks.0.norm1.weight": torch.ones(32),
           "decoder_norm.weight": torch.ones(32), "decoder_pred.weight": torch.randn(192, 32)}
    torch.save({"model": mae, "epoch": 799, "scaler": {"scale": 65536.0}}, tmp_path / "mae.pth")
    model, _ = _load(VIT, tmp_path / "mae.pth")
    _assert_same_trunk(arch, model, trunk)


def test_moco_v3(tmp_path) -> None:
    # MoCo v3 main_moco.py: {"epoch", "arch", "state_dict": DDP(MoCo) with base_encoder (its head is
    # the projector), momentum_encoder and predictor, "optimizer", "scaler"}
    arch, source, trunk = _source()
    state = {f"module.base_encoder.{k}": v for k, v in trunk.items()}
    state |= {f"module.momentum_encoder.{k}": v + 1 for k, v in trunk.items()}
    state |= {"module.base_encoder.head.0.weight": torch.randn(64, 48),
              "module.predictor.0.weight": torch.randn(64, 64)}
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state}, tmp_path / "moco.pth.tar")
    model, _ = _load(VIT, tmp_path / "moco.pth.tar")
    _assert_same_trunk(arch, model, trunk)


def test_dinov2_hub_with_registers_chunks_and_other_grid(tmp_path) -> None:
    # DINOv2 hub state dict: cls_token, pos_embed with the class position (trained at 518 px),
    # register_tokens, mask_token, patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
    # norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm; FSDP-chunked models nest blocks as blocks.C.N.
    name = "timm/vit_small_patch14_reg4_dinov2[img_size=28,depth=2,embed_dim=48,num_heads=2]"
    arch, source, trunk = _source(name)
    assert "reg_token" in trunk and trunk["pos_embed"].shape == (1, 4, 48)  # no_embed_class: patches only
    cls_position = torch.randn(1, 1, 48)
    hub = {k: v for k, v in trunk.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    hub = {re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k): v for k, v in hub.items()}
    hub |= {"register_tokens": trunk["reg_token"], "cls_token": trunk["cls_token"] - cls_position,
            "pos_embed": torch.cat([cls_position, trunk["pos_embed"]], 1), "mask_token": torch.zeros(1, 48)}
    torch.save(hub, tmp_path / "dinov2_vits14_reg4.pth")
    model, info = _load(name, tmp_path / "dinov2_vits14_reg4.pth")
    _assert_same_trunk(arch, model, trunk, exact=False)
    assert "dinov2-block-chunks" in info["layout"] and "register_tokens->reg_token" in info["layout"]

    # a checkpoint trained at another resolution: pos_embed resampled to the model's grid (timm's
    # resample_abs_pos_embed, bicubic, is the oracle)
    plain = "timm/vit_small_patch14_dinov2[img_size=28,depth=2,embed_dim=48,num_heads=2]"
    arch, source, trunk = _source(plain)
    big = torch.randn(1, 1 + 16, 48)
    torch.save({**trunk, "pos_embed": big, "mask_token": torch.zeros(1, 48)}, tmp_path / "dinov2_518.pth")
    model, info = _load(plain, tmp_path / "dinov2_518.pth")
    from timm.layers import resample_abs_pos_embed

    expected = resample_abs_pos_embed(big, (2, 2), (4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    assert info["layout"] == ["pos_embed 4x4->2x2 (bicubic)"]


@pytest.mark.parametrize("variant", ["vit_small_patch16_dinov3", "vit_small_patch16_dinov3_qkvb"])
def test_dinov3_names_map_to_timm_eva(tmp_path, variant) -> None:
    # DINOv3 state dict: cls_token, storage_tokens, mask_token, rope_embed.periods, blocks.N.{attn.qkv
    # (bias with bias_mask), ls1.gamma, ls2.gamma, ...}; timm's Eva: reg_token, gamma_1/2, q_bias/v_bias
    name = f"timm/{variant}[img_size=32,depth=2,embed_dim=48,num_heads=2]"
    arch, source, trunk = _source(name)
    state = {"mask_token": torch.zeros(1, 48), "rope_embed.periods": torch.ones(6)}
    for key, value in trunk.items():
        if key.endswith("q_bias"):
            v_bias = trunk[key.replace("q_bias", "v_bias")]
            state[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.zeros_like(value), v_bias])
            state[key.replace("q_bias", "qkv.bias_mask")] = torch.ones(3 * value.numel())
            continue
        if key.endswith("v_bias"):
            continue
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")
        state[key] = value
    if variant.endswith("dinov3"):  # distilled models: all-zero qkv biases the bias-free timm model omits
        for block in range(2):
            state[f"blocks.{block}.attn.qkv.bias"] = torch.zeros(144)
    torch.save(state, tmp_path / "dinov3.pth")
    model, info = _load(name, tmp_path / "dinov3.pth")
    _assert_same_trunk(arch, model, trunk)
    assert "dinov3->eva" in info["layout"]


def _hf_folder(tmp_path, trunk: dict, config: dict, prefix: str = ""):
    """A Hugging Face ViTModel.save_pretrained folder, written from timm weights."""
    state = {"embeddings.cls_token": trunk["cls_token"], "embeddings.position_embeddings": trunk["pos_embed"],
             "embeddings.patch_embeddings.projection.weight": trunk["patch_embed.proj.weight"],
             "embeddings.patch_embeddings.projection.bias": trunk["patch_embed.proj.bias"],
             "layernorm.weight": trunk["norm.weight"], "layernorm.bias": trunk["norm.bias"],
             "pooler.dense.weight": torch.randn(48, 48), "pooler.dense.bias": torch.zeros(48)}
    for block in range(config["num_hidden_layers"]):
        b, layer = f"blocks.{block}.", f"encoder.layer.{block}."
        for kind in ("weight", "bias"):
            q, k, v = trunk[f"{b}attn.qkv.{kind}"].chunk(3)
            state |= {f"{layer}attention.attention.query.{kind}": q, f"{layer}attention.attention.key.{kind}": k,
                      f"{layer}attention.attention.value.{kind}": v,
                      f"{layer}attention.output.dense.{kind}": trunk[f"{b}attn.proj.{kind}"],
                      f"{layer}layernorm_before.{kind}": trunk[f"{b}norm1.{kind}"],
                      f"{layer}layernorm_after.{kind}": trunk[f"{b}norm2.{kind}"],
                      f"{layer}intermediate.dense.{kind}": trunk[f"{b}mlp.fc1.{kind}"],
                      f"{layer}output.dense.{kind}": trunk[f"{b}mlp.fc2.{kind}"]}
    folder = tmp_path / "hf-vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


HF_CONFIG = {"model_type": "vit", "architectures": ["ViTModel"], "hidden_size": 48, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 192, "image_size": 32, "patch_size": 8,
             "qkv_bias": True, "layer_norm_eps": 1e-12}


def test_hugging_face_save_pretrained_folder(tmp_path) -> None:
    arch, source, trunk = _source()
    folder = _hf_folder(tmp_path, trunk, HF_CONFIG)
    model, info = _load(VIT, folder)
    _assert_same_trunk(arch, model, trunk)
    assert info["layout"] == ["hugging-face-vit"]
    x = torch.randn(2, 3, 32, 32)  # and the same network: features of A
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), source.forward_features(x))


def test_hugging_face_config_must_describe_the_architecture(tmp_path) -> None:
    _, _, trunk = _source()
    folder = _hf_folder(tmp_path, trunk, {**HF_CONFIG, "num_attention_heads": 3})
    with pytest.raises(CheckpointError, match="num_attention_heads=3 \\(the architecture has 2\\)"):
        _load(VIT, folder)


def test_missing_and_extra_keys_are_errors_listing_them(tmp_path) -> None:
    _, _, trunk = _source()
    missing = {k: v for k, v in trunk.items() if not k.startswith("blocks.1.mlp")}
    torch.save({"teacher": {f"backbone.{k}": v for k, v in missing.items()}}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError) as error:
        _load(VIT, tmp_path / "missing.pth")
    assert "4 trunk key(s) missing: blocks.1.mlp.fc1.bias, blocks.1.mlp.fc1.weight, blocks.1.mlp.fc2.bias, " \
           "blocks.1.mlp.fc2.weight" in str(error.value)
    extra = {**trunk, "blocks.2.norm1.weight": torch.ones(48), "dist_token": torch.zeros(1, 1, 48)}
    save_file({k: v.contiguous() for k, v in extra.items()}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError) as error:
        _load(VIT, tmp_path / "extra.safetensors")
    assert "2 unexpected key(s): blocks.2.norm1.weight, dist_token" in str(error.value)


def test_checkpoint_pretrainer_records_the_input_statistics(tmp_path) -> None:
    _, source, trunk = _source()
    torch.save(trunk, tmp_path / "vit.pth")
    loaded = CheckpointFile(arch=VIT, path=str(tmp_path / "vit.pth")).build(None, "vit")
    # vit_small_patch16_224's pretrained_cfg normalises with 0.5/0.5; a DINO tag uses ImageNet's
    assert loaded.info["input_mean"] == [0.5, 0.5, 0.5] and loaded.info["timm_model"] == "vit_small_patch16_224"
    dino = VIT.replace("vit_small_patch16_224", "vit_small_patch16_224.dino")
    loaded = CheckpointFile(arch=dino, path=str(tmp_path / "vit.pth")).build(None, "vit")
    assert loaded.info["input_mean"] == loaded.info["pretrained_cfg_mean"] == [0.485, 0.456, 0.406]
    assert loaded.backbone.input_stats is None  # the pipeline's own statistics: nothing to re-normalise
