"""The engine cache: keys follow exactly what an engine depends on; manifests are checked at every load; a bad
one rebuilds, or fails with the reason under no_build. Also the model fingerprint and the TensorRT profiles."""
import json

import pytest
import torch

from dreamgen.engines import EngineCache, EngineLimits, onnx_entry, tensorrt_entry
from dreamgen.engines.build import onnx_entries
from dreamgen.engines.cache import MANIFEST
from dreamgen.engines.fingerprint import checkpoint_fingerprint, weights_fingerprint
from dreamgen.engines.profiles import profiles_for
from dreamgen.engines.split_graphs import SPLIT_PARTS
from dreamgen.errors import EngineError
from dreamgen.model.tiny import build_tiny_model
from tests.helpers import tiny_model

ONNX_KEYED = dict(fingerprint="weights:abc", part="unet", precision="fp32", opset=17, exporter="torch-2.13/graphs-v1",
                  flavor="onnxruntime")
ONNX_CHANGED = dict(fingerprint="weights:abd", part="vision", precision="fp16", opset=18, exporter="torch-2.14/graphs-v1",
                    flavor="portable")

TRT_KEYED = dict(onnx_sha256="a" * 64, part="unet", precision="fp16", trt_version="10.13.0", compute_capability="sm_90",
                 profiles=[{"sample": [[1, 4, 16, 16], [2, 4, 64, 64], [8, 4, 64, 64]]}],
                 builder_flags={"strongly_typed": True, "optimization_level": 3})
TRT_CHANGED = dict(onnx_sha256="b" * 64, part="vae_decoder", precision="fp32", trt_version="10.14.1",
                   compute_capability="sm_80", profiles=[{"sample": [[1, 4, 16, 16], [2, 4, 64, 64], [16, 4, 64, 64]]}],
                   builder_flags={"strongly_typed": True, "optimization_level": 5})


# ------------------------------------------------------------------------------------------------ keys
@pytest.mark.parametrize("name", sorted(ONNX_KEYED))
def test_onnx_key_changes_with_each_keyed_input(name):
    assert onnx_entry(**{**ONNX_KEYED, name: ONNX_CHANGED[name]}).key != onnx_entry(**ONNX_KEYED).key


def test_a_graph_of_the_cut_keys_on_where_it_was_cut():
    whole = onnx_entry(**ONNX_KEYED)
    assert onnx_entry(**ONNX_KEYED, cut=None).key == whole.key  # graphs not of the cut keep their keys
    assert len({whole.key, onnx_entry(**ONNX_KEYED, cut=1).key, onnx_entry(**ONNX_KEYED, cut=2).key}) == 3


@pytest.mark.parametrize("name", sorted(TRT_KEYED))
def test_tensorrt_key_changes_with_each_keyed_input(name):
    assert tensorrt_entry(**{**TRT_KEYED, name: TRT_CHANGED[name]}).key != tensorrt_entry(**TRT_KEYED).key


def test_keys_ignore_everything_else():
    # the model's name is a label for people; tuples and lists, dict order: the same JSON, the same key
    assert onnx_entry(**ONNX_KEYED, label="tiny").key == onnx_entry(**ONNX_KEYED, label="other").key
    as_tuples = {**TRT_KEYED, "profiles": [{"sample": [(1, 4, 16, 16), (2, 4, 64, 64), (8, 4, 64, 64)]}],
                 "builder_flags": {"optimization_level": 3, "strongly_typed": True}}
    assert tensorrt_entry(**as_tuples, label="x").key == tensorrt_entry(**TRT_KEYED).key
    # and the cache root is not part of an engine's identity
    entry = onnx_entry(**ONNX_KEYED)
    assert EngineCache("/a").path(entry).name == EngineCache("/b").path(entry).name


def test_onnx_keys_of_a_model_follow_its_weights():
    model = tiny_model()
    same = onnx_entries(model, "fp32")
    assert {p: e.key for p, e in same.items()} == {p: e.key for p, e in onnx_entries(model, "fp32").items()}
    other = build_tiny_model(seed=1)
    assert all(onnx_entries(other, "fp32")[p].key != e.key for p, e in same.items())
    fp16 = onnx_entries(model, "fp16")
    assert fp16["vae_decoder"].key == same["vae_decoder"].key  # the VAE is fp32 at every precision
    assert fp16["unet"].key != same["unet"].key
    portable = onnx_entries(model, "fp32", flavor="portable")  # TensorRT's graphs
    assert portable["unet"].key != same["unet"].key  # only the UNet has an ONNX Runtime flavour
    assert all(portable[p].key == same[p].key for p in ("vae_decoder", "vision"))
    assert all(portable[p].key != same[p].key for p in SPLIT_PARTS)  # the cut's graphs attend too
    # the UNet cut for cache_interval: three graphs of their own
    assert set(portable) == set(same) == {"unet", "vae_decoder", "vision", *SPLIT_PARTS}


def test_fingerprints_see_weight_changes(tmp_path):
    model = build_tiny_model(seed=0)
    before = weights_fingerprint(model)
    with torch.no_grad():
        model.head.unet.conv_out.bias[0] += 1e-3
    assert weights_fingerprint(model) != before

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    weights = tmp_path / "stable_diffusion_head.bin"
    weights.write_bytes(bytes(3 * 1024 * 1024))
    (tmp_path / ".complete").write_text("ok")
    first = checkpoint_fingerprint(tmp_path)
    (tmp_path / ".complete").write_text("a marker file is not a weight")
    assert checkpoint_fingerprint(tmp_path) == first
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] = 1  # a change in the middle of the file, same size
    weights.write_bytes(bytes(data))
    assert checkpoint_fingerprint(tmp_path) != first


# ------------------------------------------------------------------------------------------------ manifests
class CountingBuild:
    def __init__(self):
        self.calls = 0

    def __call__(self, directory):
        self.calls += 1
        (directory / "engine.plan").write_bytes(b"plan %d" % self.calls)
        return {"note": "fake engine"}


@pytest.fixture
def built(tmp_path):
    cache, entry, build = EngineCache(tmp_path), onnx_entry(**ONNX_KEYED, label="tiny"), CountingBuild()
    first = cache.ensure(entry, build)
    assert first.built and build.calls == 1
    return cache, entry, build


def test_a_sound_engine_is_reused(built):
    cache, entry, build = built
    again = cache.ensure(entry, build)
    assert not again.built and build.calls == 1
    manifest = json.loads((again.path / MANIFEST).read_text())
    assert manifest["key"] == entry.key and manifest["label"] == "tiny" and manifest["note"] == "fake engine"
    assert manifest["files"]["engine.plan"]["bytes"] == len(b"plan 1")


@pytest.mark.parametrize("damage, reason", [
    (lambda path: (path / MANIFEST).write_text("{ not json"), "corrupted"),
    (lambda path: (path / MANIFEST).write_text("[1, 2]"), "corrupted"),
    (lambda path: _edit_manifest(path, lambda m: m["key_inputs"].__setitem__("opset", 11)), "opset: built with 11"),
    (lambda path: _edit_manifest(path, lambda m: m.__setitem__("format", 0)), "format"),
    (lambda path: (path / "engine.plan").write_bytes(b"truncated"), "bytes"),
    (lambda path: (path / "engine.plan").unlink(), "missing"),
    (lambda path: (path / MANIFEST).unlink(), "not built"),
])
def test_a_corrupted_or_mismatched_manifest_forces_a_rebuild(built, damage, reason):
    cache, entry, build = built
    damage(cache.path(entry))
    assert reason in cache.problem(entry)
    with pytest.raises(EngineError, match="building is turned off") as error:
        cache.ensure(entry, build, no_build=True)
    assert reason in str(error.value) and build.calls == 1
    rebuilt = cache.ensure(entry, build)
    assert rebuilt.built and build.calls == 2 and cache.problem(entry) is None


def test_same_size_damage_is_found_when_files_are_verified(built):
    cache, entry, build = built
    (cache.path(entry) / "engine.plan").write_bytes(b"plan X")  # same length as "plan 1"
    assert cache.problem(entry) is None  # sizes only, at load
    assert "sha256" in cache.problem(entry, verify_files=True)


def _edit_manifest(path, change):
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_listing_shows_sound_and_unusable_entries(built):
    cache, entry, _ = built
    broken = onnx_entry(**{**ONNX_KEYED, "part": "vision"})
    cache.ensure(broken, CountingBuild())
    (cache.path(broken) / MANIFEST).write_text("nope")
    rows = {path.name: (manifest, problem) for path, manifest, problem in cache.listing()}
    assert rows[entry.dirname][0]["part"] == "unet" and rows[entry.dirname][1] is None
    assert rows[broken.dirname][0] is None and "corrupted" in rows[broken.dirname][1]


# ------------------------------------------------------------------------------------------------ profiles
def test_unet_profile_doubles_the_batch_for_guidance_and_bounds_the_image():
    model = tiny_model()
    (unet,) = profiles_for(model, "unet", EngineLimits(max_batch=4, image_size=128))
    assert [shape[0] for shape in unet["sample"]] == [1, 2, 8]
    assert unet["sample"][1][2:] == (8, 8) and unet["sample"][2][2:] == (16, 16)  # opt: the model's 64 px
    assert unet["encoder_hidden_states"][2] == (8, 8, 32) and unet["timestep"] == [(1,), (2,), (8,)]
    with pytest.raises(EngineError, match="multiple of the VAE factor"):
        profiles_for(model, "unet", EngineLimits(image_size=100))
