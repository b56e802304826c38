"""Checkpoints in the released layout: round trips, safetensors, and clear errors for anything missing."""
import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from dreamgen.errors import CheckpointError
from dreamgen.model.checkpoint import save_checkpoint
from dreamgen.model.loader import load_model
from dreamgen.params import DREAMGEN_DEFAULTS, REFERENCE_DEFAULTS
from tests.helpers import request, tiny_model

REPO = Path(__file__).resolve().parent.parent
RELEASED_FILES = {"config.json", "pytorch_model.bin", "clip_vision_embedding.bin", "dream_embedding.bin",
                  "stable_diffusion_head.bin"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(tiny_model(), out)
    return out


def assert_same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_released_layout_round_trip_gives_identical_tensors(saved):
    names = {p.name for p in saved.iterdir()}
    assert RELEASED_FILES <= names
    assert {"unet", "vae", "scheduler", "clip_vision", "tokenizer_config.json"} <= names
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["DreamLLMForCausalMLM"]
    assert set(config["plugins_init_kwargs"]) == {"clip_vision_embedding", "dream_embedding", "stable_diffusion_head"}
    assert config["plugins_init_kwargs"]["dream_embedding"]["num_dream_queries"] == 8
    assert config["special_tokens2ids_dict"]["additional_special_tokens"]["<dream_start>"] == 32003
    # the part files hold the released key names
    assert set(torch.load(saved / "dream_embedding.bin")) == {"dream_queries"}
    head_keys = set(torch.load(saved / "stable_diffusion_head.bin"))
    assert "projector.projector.weight" in head_keys and any(k.startswith("unet.") for k in head_keys)
    clip_keys = set(torch.load(saved / "clip_vision_embedding.bin"))
    assert {"projector.projector.weight", "projector.projector.bias"} <= clip_keys
    assert {k for k in clip_keys if not k.startswith("projector.")} == {  # transformers 4.35's names, as released
        "clip_vision_model.vision_model." + k for k in tiny_model().vision.clip_vision_model.state_dict()}
    assert "lm_head.weight" in torch.load(saved / "pytorch_model.bin")

    loaded = load_model(str(saved))
    assert_same_tensors(tiny_model(), loaded)
    assert loaded.special == tiny_model().special


def test_safetensors_round_trip(tmp_path):
    save_checkpoint(tiny_model(), tmp_path, safetensors=True)
    assert {"model.safetensors", "dream_embedding.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    assert_same_tensors(tiny_model(), load_model(str(tmp_path)))


def test_a_loaded_checkpoint_generates_the_same_document(saved):
    from dreamgen.generation.generator import Generator
    req = request(seed=3, max_images=2, max_new_tokens=40)
    a = Generator(tiny_model()).generate([req])[0]
    b = Generator(load_model(str(saved))).generate([req])[0]
    assert a.text == b.text and len(a.images) == len(b.images)


def test_missing_dream_queries_is_an_error_never_random_weights(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "dream_embedding.bin").unlink()
    with pytest.raises(CheckpointError, match=r"missing dream_embedding.safetensors or dream_embedding.bin"):
        load_model(str(broken))


def test_missing_keys_are_named(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    state = torch.load(broken / "stable_diffusion_head.bin")
    del state["projector.projector.weight"]
    torch.save(state, broken / "stable_diffusion_head.bin")
    with pytest.raises(CheckpointError, match=r"stable_diffusion_head.bin lacks 1 key\(s\).*projector.projector.weight"):
        load_model(str(broken))


def test_wrong_shapes_are_named(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    torch.save({"dream_queries": torch.zeros(1, 4, 64)}, broken / "dream_embedding.bin")
    with pytest.raises(CheckpointError, match=r"dream_queries has shape \(1, 4, 64\)"):
        load_model(str(broken))


def test_missing_config_and_tokenizer_are_named(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer files"):
        load_model(str(broken))
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing .*config.json"):
        load_model(str(broken))


def test_released_checkpoints_use_the_packaged_sd21_and_clip_configs(tmp_path, monkeypatch):
    # A checkpoint naming the hub ids, or hub-cache snapshots of them (as the released config does), needs no
    # config files of its own.
    from dreamgen.model.card import find_clip_config, find_diffusion_dir, read_json
    monkeypatch.delenv("DREAMGEN_MODEL_CONFIGS")  # the tests' toy configs (conftest), searched first when set
    snapshot = "/data/hf/hub/models--{}/snapshots/0123abcd"
    for clip in ("openai/clip-vit-large-patch14", snapshot.format("openai--clip-vit-large-patch14"),
                 "/mnt/models/clip-vit-large-patch14/"):
        assert find_clip_config(tmp_path, clip)["hidden_size"] == 1024, clip
    for sd_name in ("stabilityai/stable-diffusion-2-1-base", snapshot.format("stabilityai--stable-diffusion-2-1-base")):
        sd = find_diffusion_dir(tmp_path, sd_name)
        unet = read_json(sd / "unet" / "config.json")
        assert unet["cross_attention_dim"] == 1024 and unet["sample_size"] == 64
        assert read_json(sd / "scheduler" / "scheduler_config.json")["prediction_type"] == "epsilon"
    # a name is matched whole: the 336 px CLIP and SD 2.1 at 768 px are other models
    with pytest.raises(CheckpointError, match="not packaged with dreamgen"):
        find_clip_config(tmp_path, snapshot.format("openai--clip-vit-large-patch14-336"))
    with pytest.raises(CheckpointError, match="not packaged with dreamgen"):
        find_diffusion_dir(tmp_path, "stabilityai/stable-diffusion-2-1")
    with pytest.raises(CheckpointError, match="not packaged with dreamgen"):
        find_diffusion_dir(tmp_path, "someone/other-diffusion")


def test_model_configs_folder_is_searched_before_the_packaged_one(tmp_path, toy_model_configs, monkeypatch):
    from dreamgen.model.card import find_clip_config, find_diffusion_dir
    from tests.released_checkpoint import TINY
    assert find_clip_config(tmp_path, "openai/clip-vit-large-patch14")["hidden_size"] == TINY.clip_hidden
    assert find_diffusion_dir(tmp_path, "stabilityai/stable-diffusion-2-1-base") == toy_model_configs / "sd21-base"
    monkeypatch.setenv("DREAMGEN_MODEL_CONFIGS", str(tmp_path / "empty"))  # one without the model: the packaged
    assert find_clip_config(tmp_path, "openai/clip-vit-large-patch14")["hidden_size"] == 1024


def test_configs_beside_the_weights_win_over_the_packaged_ones(tmp_path):
    from dreamgen.model.card import find_clip_config, find_diffusion_dir
    (tmp_path / "clip_vision").mkdir()
    (tmp_path / "clip_vision" / "config.json").write_text(json.dumps({"hidden_size": 48, "image_size": 32}))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    assert find_clip_config(tmp_path, "openai/clip-vit-large-patch14")["hidden_size"] == 48
    assert find_diffusion_dir(tmp_path, "stabilityai/stable-diffusion-2-1-base") == tmp_path


def test_hub_id_offline_gives_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"could not download 'nobody/no-such-model'.*--local-dir DIR"):
        load_model("nobody/no-such-model")


def test_dtype_and_device_are_checked():
    with pytest.raises(CheckpointError, match="unknown dtype 'fp8'"):
        load_model("tiny-random", dtype="fp8")
    with pytest.raises(CheckpointError, match="unknown device 'tpu'"):
        load_model("tiny-random", device="tpu")


def test_bf16_load_keeps_the_vae_in_fp32(saved):
    model = load_model(str(saved), dtype="bf16")
    assert model.llm.dtype == torch.bfloat16 and model.head.unet.dtype == torch.bfloat16
    assert model.head.vae.dtype == torch.float32


def test_a_rerun_writes_the_same_config_bytes(tmp_path):
    """diffusers keeps the UNet's and VAE's default keys as list(set): their order follows Python's per-process
    string hash, so without sorting two runs of the same recipe wrote different unet/config.json files."""
    import subprocess
    import sys

    script = ("import sys; from tests.helpers import tiny_model; from dreamgen.model.checkpoint import "
              "save_checkpoint; save_checkpoint(tiny_model(), sys.argv[1])")
    texts = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, cwd=REPO)
        unet = json.loads((out / "unet" / "config.json").read_text())
        assert unet["_use_default_values"], "the tiny UNet leaves some keys to their defaults"
        texts.append([(out / sub / "config.json").read_bytes() for sub in ("unet", "vae")])
    assert texts[0] == texts[1]


def test_a_checkpoint_names_the_defaults_it_paints_and_writes_with(tmp_path):
    model = copy.deepcopy(tiny_model())  # tiny_model() is shared: never change it
    save_checkpoint(model, tmp_path / "ours")
    config_path = tmp_path / "ours" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["_dreamgen_defaults"] == DREAMGEN_DEFAULTS.to_dict()  # a model built here keeps dreamgen's
    assert load_model(str(tmp_path / "ours")).info.defaults == DREAMGEN_DEFAULTS

    model.info.defaults = dataclasses.replace(DREAMGEN_DEFAULTS, guidance=2.0, steps=20, scheduler="ddim")
    save_checkpoint(model, tmp_path / "own")
    assert load_model(str(tmp_path / "own")).info.defaults == model.info.defaults

    # the released checkpoints name none (nor a dreamgen name): the reference scripts' settings
    released = {k: v for k, v in config.items() if not k.startswith("_dreamgen")}
    config_path.write_text(json.dumps(released))
    assert load_model(str(tmp_path / "ours")).info.defaults == REFERENCE_DEFAULTS
    assert (REFERENCE_DEFAULTS.scheduler, REFERENCE_DEFAULTS.steps, REFERENCE_DEFAULTS.guidance) == ("ddpm", 150, 3.5)
    # a checkpoint may name some; the others are the reference's
    config_path.write_text(json.dumps({**released, "_dreamgen_defaults": {"steps": 30}}))
    assert load_model(str(tmp_path / "ours")).info.defaults == dataclasses.replace(REFERENCE_DEFAULTS, steps=30)
    # one dreamgen wrote before it named them all keeps what it painted and wrote with then
    config_path.write_text(json.dumps({**released, "_dreamgen_model_name": "old", "_dreamgen_guidance": 2.0}))
    assert load_model(str(tmp_path / "ours")).info.defaults == dataclasses.replace(DREAMGEN_DEFAULTS, guidance=2.0)

    for bad, message in [({"_dreamgen_guidance": 51}, r"_dreamgen_guidance must be a number in \[0, 50\], got 51"),
                         ({"_dreamgen_defaults": {"guidance": "high"}},
                          r'_dreamgen_defaults\.guidance must be a number in \[0, 50\], got "high"'),
                         ({"_dreamgen_defaults": {"steps": 0}},
                          r"_dreamgen_defaults\.steps must be an integer in \[1, 999\], got 0"),
                         ({"_dreamgen_defaults": {"scheduler": "euler"}},
                          r"_dreamgen_defaults\.scheduler must be one of"),
                         ({"_dreamgen_defaults": {"temperature": None}}, r"_dreamgen_defaults\.temperature is null"),
                         ({"_dreamgen_defaults": {"seed": 1}}, r"_dreamgen_defaults has unknown field\(s\) seed"),
                         ({"_dreamgen_defaults": [150]}, r"_dreamgen_defaults must be an object")]:
        config_path.write_text(json.dumps({**released, **bad}))
        with pytest.raises(CheckpointError, match=r"config\.json: " + message):
            load_model(str(tmp_path / "ours"))
