"""ONNX graphs of the tiny model against torch: each part at several shapes (odd ones too), fp16 graphs within
their tolerance, whole documents equal on both backends. The graphs are exported once per module."""
import shutil

import numpy as np
import onnx
import pytest
import torch

from dreamgen.engines import EngineCache, OnnxComponents, ensure_onnx_graphs, export_part
from dreamgen.engines.build import graph_files
from dreamgen.engines.cache import sha256_files
from dreamgen.engines.graphs import export_latent_size, unet_downsamples
from dreamgen.engines.onnx_backend import GraphSession
from dreamgen.engines.split_graphs import SPLIT_PARTS
from dreamgen.engines.verify import TOLERANCE, scaled_error, verify_components
from dreamgen.errors import EngineError
from dreamgen.generation.components import TorchComponents
from dreamgen.generation.generator import Generator
from tests.helpers import max_pixel_diff, request, tiny_model

FP32 = TOLERANCE["fp32"]  # 1e-4, of max |torch| where that exceeds 1, else absolute


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return EngineCache(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def graphs(cache):
    return {precision: ensure_onnx_graphs(tiny_model(), precision, cache) for precision in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def onnx_fp32(graphs):
    return OnnxComponents(tiny_model(), graph_files(graphs["fp32"]), threads=2)


@pytest.fixture(scope="module")
def torch_parts():
    return TorchComponents(tiny_model())


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ each part
def test_unet_is_exported_at_a_latent_size_the_downsampling_does_not_divide():
    model = tiny_model()
    assert export_latent_size(model) % unet_downsamples(model) != 0


@pytest.mark.parametrize("batch, height, width", [(1, 8, 8), (2, 9, 9), (4, 7, 12), (6, 5, 5), (2, 16, 11)])
def test_unet_matches_torch(onnx_fp32, torch_parts, batch, height, width):
    model = tiny_model()
    sample = randn(batch, 4, height, width, seed=batch)
    cond = randn(batch, model.special.num_dream_queries, model.head.unet.config.cross_attention_dim, seed=height)
    for t in (torch.tensor(741), torch.arange(batch) * 97 + 13):  # the batch at one step; each sample at its own
        got, want = onnx_fp32.unet(sample, t, cond), torch_parts.unet(sample, t, cond)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert scaled_error(got, want) < FP32


def test_each_sample_of_a_unet_batch_is_at_its_own_timestep(onnx_fp32):
    model = tiny_model()
    sample = randn(3, 4, 8, 8, seed=7)
    cond = randn(3, model.special.num_dream_queries, model.head.unet.config.cross_attention_dim, seed=8)
    steps = torch.tensor([901, 501, 21])
    together = onnx_fp32.unet(sample, steps, cond)
    for i, t in enumerate(steps):  # row i is what sample i alone gives at its own step, not at another's
        alone = onnx_fp32.unet(sample[i:i + 1], t, cond[i:i + 1])
        assert scaled_error(together[i:i + 1], alone) < FP32
        assert scaled_error(together[i:i + 1], onnx_fp32.unet(sample[i:i + 1], steps[i - 1], cond[i:i + 1])) > 1e-3
    with pytest.raises(ValueError, match=r"one value or one per sample \(3,\), got shape \(2,\)"):
        onnx_fp32.unet(sample, steps[:2], cond)


def test_unet_exported_at_a_divisible_size_breaks_at_odd_sizes(tmp_path):
    # Why export_latent_size exists: diffusers' divisibility check is frozen into the graph at export time.
    import onnxruntime as ort

    from dreamgen.engines import graphs as graphs_module

    model = tiny_model()
    original = graphs_module.export_latent_size
    graphs_module.export_latent_size = lambda m: m.head.unet.config.sample_size  # 8: divisible by 2
    try:
        result = export_part(model, "unet", "fp32", tmp_path)
    finally:
        graphs_module.export_latent_size = original
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    feeds = {"sample": np.zeros((2, 4, 9, 9), np.float32), "timestep": np.ones(2, np.float32),
             "encoder_hidden_states": np.zeros((2, 8, 32), np.float32)}
    with pytest.raises(Exception):
        session.run(None, feeds)


def test_the_portable_unet_for_tensorrt_matches_torch_too(cache, graphs, torch_parts):
    model = tiny_model()
    portable = ensure_onnx_graphs(model, "fp32", cache, flavor="portable")
    # the UNet's graphs, whole and cut, come in two flavours; the rest is shared
    assert {p for p, g in portable.items() if g.path != graphs["fp32"][p].path} == {"unet", *SPLIT_PARTS}
    for part in ("unet", "unet_deep", "unet_shallow_up"):  # the shallow down graph is conv_in alone
        ops = {p: {n.op_type for n in onnx.load(str(g[part].file("model.onnx"))).graph.node}
               for p, g in (("portable", portable), ("onnxruntime", graphs["fp32"]))}
        assert "MultiHeadAttention" in ops["onnxruntime"] and "MultiHeadAttention" not in ops["portable"], part
    session = GraphSession(portable["unet"].file("model.onnx"), ["CPUExecutionProvider"])
    for batch, side in ((2, 8), (4, 9)):
        sample, cond = randn(batch, 4, side, side), randn(batch, 8, 32, seed=1)
        t = torch.linspace(741, 41, batch)  # one timestep per sample
        got = session.run({"sample": sample, "timestep": t, "encoder_hidden_states": cond},
                          {"out_sample": tuple(sample.shape)})["out_sample"]
        assert scaled_error(got, torch_parts.unet(sample, t, cond)) < FP32


@pytest.mark.parametrize("batch, height, width", [(1, 8, 8), (3, 9, 7), (2, 5, 12)])
def test_vae_decoder_matches_torch(onnx_fp32, torch_parts, batch, height, width):
    latents = randn(batch, 4, height, width, seed=width)
    got, want = onnx_fp32.vae_decode(latents), torch_parts.vae_decode(latents)
    assert got.shape == (batch, 3, 8 * height, 8 * width) == want.shape
    assert scaled_error(got, want) < FP32


@pytest.mark.parametrize("batch, size", [(1, 64), (2, 48), (5, 33)])
def test_vision_encoder_matches_torch(onnx_fp32, torch_parts, batch, size):
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size))
    got, want = onnx_fp32.encode_images(images), torch_parts.encode_images(images)
    assert got.shape == want.shape == (batch, tiny_model().special.num_image_patches, tiny_model().hidden_size)
    assert scaled_error(got, want) < FP32


# ------------------------------------------------------------------------------------------------ fp16
def test_fp16_graphs_carry_their_precision_and_stay_within_tolerance(graphs):
    model = tiny_model()
    fp16 = graphs["fp16"]
    elem = {part: onnx.load(str(g.file("model.onnx")), load_external_data=False).graph.input[0].type.tensor_type.elem_type
            for part, g in fp16.items()}
    assert elem == {"unet": onnx.TensorProto.FLOAT16, "vision": onnx.TensorProto.FLOAT16,
                    "vae_decoder": onnx.TensorProto.FLOAT,  # the VAE stays fp32
                    **{part: onnx.TensorProto.FLOAT16 for part in SPLIT_PARTS}}  # the cut's first inputs
    assert fp16["vae_decoder"].path == graphs["fp32"]["vae_decoder"].path  # one fp32 VAE graph serves both
    checks = verify_components(model, OnnxComponents(model, graph_files(fp16), threads=2), "onnx", "fp16")
    assert TOLERANCE["fp16"] == 1e-2
    assert all(check.ok for check in checks), [check.line() for check in checks]
    assert [check.part for check in checks] == ["unet", "vae_decoder", "vision", "unet_cut"]


# ------------------------------------------------------------------------------------------------ documents
def test_sessions_do_not_spin_between_runs(onnx_fp32):
    """Torch runs between graph calls; ONNX Runtime threads spin-waiting would take its cores (bench: 2x slower)."""
    for part, graph in onnx_fp32.sessions.items():
        options = graph.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0", part
        assert options.intra_op_num_threads == 2, part


def test_greedy_tokens_of_a_whole_document_equal_torch(onnx_fp32):
    model = tiny_model()
    req = request("write about the history of the river", max_images=0, max_new_tokens=48)
    want = Generator(model).generate([req])[0]
    got = Generator(model, components=onnx_fp32).generate([req])[0]
    assert got.text == want.text and len(want.text) > 20
    assert got.stop_reason == want.stop_reason
    assert got.timings["backend"] == "onnx" and want.timings["backend"] == "torch"


def test_a_whole_illustrated_document_matches_torch(onnx_fp32):
    model = tiny_model()
    reqs = [request("how to grow tomatoes", seed=11, max_new_tokens=40, max_images=2),
            request("how to bake bread", seed=5, max_new_tokens=30, max_images=1, guidance=1.0),
            request("a short article about rivers", seed=3, max_new_tokens=40)]
    want = Generator(model).generate(reqs)
    got = Generator(model, components=onnx_fp32).generate(reqs)
    # pictures were painted (guided and not), read back, and writing went on after them
    assert [blk.type for blk in want[0].blocks][:3] == ["text", "image", "text"] and want[1].images
    for a, b in zip(got, want):
        assert a.text == b.text
        assert [blk.type for blk in a.blocks] == [blk.type for blk in b.blocks]
        for x, y in zip(a.images, b.images):
            assert max_pixel_diff(x.image, y.image) <= 2  # of 255


# ------------------------------------------------------------------------------------------------ files
def test_external_data_is_written_beside_the_graph_and_hashed_with_it(tmp_path):
    model = tiny_model()
    result = export_part(model, "vision", "fp32", tmp_path, external_data=True)
    data = tmp_path / "model.onnx.data"
    assert result.external_data and result.files == [tmp_path / "model.onnx", data]
    assert data.stat().st_size > (tmp_path / "model.onnx").stat().st_size  # the weights are outside the graph
    session = GraphSession(result.path, ["CPUExecutionProvider"])  # loads the weights from beside the graph
    pixels = model.vision.preprocess(torch.rand(2, 3, 32, 32))
    got = session.run({"pixel_values": pixels}, {"image_features": (2, 16, 64)})["image_features"]
    with torch.no_grad():
        assert scaled_error(got, model.vision(pixels)) < FP32
    before = sha256_files(result.files)
    with open(data, "r+b") as f:  # one changed weight byte changes the graph's digest (a TensorRT key input)
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    assert sha256_files(result.files) != before


def test_graphs_are_found_in_the_cache_not_exported_again(cache, graphs):
    again = ensure_onnx_graphs(tiny_model(), "fp32", cache, no_build=True)
    assert not any(g.built for g in again.values())
    assert {p: g.path for p, g in again.items()} == {p: g.path for p, g in graphs["fp32"].items()}


def test_a_damaged_graph_manifest_rebuilds_that_graph_only(cache, graphs, tmp_path):
    copy = EngineCache(tmp_path / "engines")
    shutil.copytree(cache.root, copy.root)
    vision = copy.path(graphs["fp32"]["vision"].entry)
    (vision / "manifest.json").write_text("{ truncated")
    with pytest.raises(EngineError, match="vision.*corrupted.*building is turned off"):
        ensure_onnx_graphs(tiny_model(), "fp32", copy, no_build=True)
    again = ensure_onnx_graphs(tiny_model(), "fp32", copy)
    assert {part for part, g in again.items() if g.built} == {"vision"}
