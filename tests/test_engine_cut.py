"""cache_interval on the compiled backends (issue 32): the UNet's cut (generation/deepcache.py) exported as three ONNX
graphs (engines/split_graphs.py) and run by ONNX Runtime in split_unet's one-call shape. Against the torch cut: each
call at odd shapes and mixed phases, whole documents at intervals 2 and 3, pictures at different phases in one call;
the engine cache keeps the graphs; a cache without them paints full steps and says so; TensorRT's engines of the
cut are built from the portable graphs (against tests/tensorrt_standin.py)."""
import logging
import shutil

import onnx
import pytest
import torch

from dreamgen.engines import EngineCache, EngineLimits, OnnxComponents, ensure_onnx_graphs, select_backend
from dreamgen.engines import build as build_module
from dreamgen.engines import tensorrt_backend
from dreamgen.engines.build import find_onnx_graphs, graph_files
from dreamgen.engines.graphs import model_parts
from dreamgen.engines.onnx_backend import GraphSession
from dreamgen.engines.profiles import latent_range, profiles_for
from dreamgen.engines.split_graphs import DEEP, SHALLOW_DOWN, SHALLOW_UP, SPLIT_PARTS, split_io, split_shapes
from dreamgen.engines.verify import TOLERANCE, scaled_error
from dreamgen.generation import diffusion
from dreamgen.generation.components import TorchComponents
from dreamgen.generation.diffusion import ImageRequest
from dreamgen.generation.generator import Generator
from dreamgen.jobs.png import encode_png, read_png_parameters
from tests.helpers import max_pixel_diff, paint_alone, paint_joined, request, tiny_model
from tests.tensorrt_standin import StandInTensorRT

FP32 = TOLERANCE["fp32"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return EngineCache(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def graphs(cache):
    return ensure_onnx_graphs(tiny_model(), "fp32", cache)


@pytest.fixture(scope="module")
def onnx_fp32(graphs):
    return OnnxComponents(tiny_model(), graph_files(graphs), threads=1)


@pytest.fixture(scope="module")
def torch_parts():
    return TorchComponents(tiny_model())


class count_rows:
    """Rows each graph of the cut was run on (its first input's batch), by wrapping the sessions' run."""

    def __init__(self, components):
        self.rows = {part: 0 for part in SPLIT_PARTS}
        self.sessions = {part: components.sessions[part] for part in SPLIT_PARTS}
        for part, session in self.sessions.items():
            session.run = self._counting(part, session.run)

    def _counting(self, part, run):
        def counted(feeds, shapes):
            self.rows[part] += next(iter(feeds.values())).shape[0]
            return run(feeds, shapes)
        return counted

    def close(self):
        for session in self.sessions.values():
            del session.run  # back to the class's method


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ the graphs
def test_a_model_that_can_be_cut_is_exported_with_its_cut(graphs):
    assert model_parts(tiny_model()) == ("unet", "vae_decoder", "vision", *SPLIT_PARTS) == tuple(graphs)
    inputs = {part: [i.name for i in onnx.load(str(graphs[part].file("model.onnx"))).graph.input]
              for part in SPLIT_PARTS}
    # cut at conv_in (deepcache.SHALLOW_SKIPS = 1): the shallow down graph attends to nothing; skip_0 is where the deep
    # part starts and gives its last upsampler its size
    assert inputs == {SHALLOW_DOWN: ["sample", "timestep"],
                      DEEP: ["emb", "encoder_hidden_states", "skip_0"],
                      SHALLOW_UP: ["deep", "emb", "encoder_hidden_states", "skip_0"]}
    # the cut's graphs hold the UNet's weights once between them (only what each part uses)
    sizes = {part: graphs[part].file("model.onnx").stat().st_size for part in ("unet", *SPLIT_PARTS)}
    assert abs(sum(sizes[p] for p in SPLIT_PARTS) - sizes["unet"]) < 0.05 * sizes["unet"]


@pytest.mark.parametrize("batch, height, width", [(1, 8, 8), (2, 9, 9), (4, 7, 12), (3, 5, 5), (2, 16, 11)])
def test_the_cut_matches_torchs_at_every_phase(onnx_fp32, torch_parts, batch, height, width):
    model = tiny_model()
    sample = randn(batch, 4, height, width, seed=batch)
    cond = randn(batch, model.special.num_dream_queries, model.head.unet.config.cross_attention_dim, seed=height)
    t = torch.arange(batch) * 97 + 13
    every = torch.ones(batch, dtype=torch.bool)
    got_eps, got_deep = onnx_fp32.split_unet(sample, t, cond, every, None)
    want_eps, want_deep = torch_parts.split_unet(sample, t, cond, every, None)
    assert got_deep.shape == want_deep.shape and scaled_error(got_deep, want_deep) < FP32
    assert scaled_error(got_eps, want_eps) < FP32
    assert scaled_error(got_eps, torch_parts.unet(sample, t, cond)) < FP32  # a full pass is the whole UNet
    stale = want_deep + 0.5 * randn(*want_deep.shape, seed=7)  # reused features: not this step's
    for full in (torch.arange(batch) % 2 == 0, torch.zeros(batch, dtype=torch.bool)):
        got_eps, got_deep = onnx_fp32.split_unet(sample, t, cond, full, stale)
        want_eps, want_deep = torch_parts.split_unet(sample, t, cond, full, stale)
        assert scaled_error(got_eps, want_eps) < FP32 and scaled_error(got_deep, want_deep) < FP32
        assert torch.equal(got_deep[~full], stale[~full])  # rows that reuse keep their feature as it was
        if not full.all():
            assert scaled_error(got_eps, torch_parts.unet(sample, t, cond)) > 10 * FP32  # and it shows


def test_the_deep_graph_runs_only_on_the_rows_at_a_full_pass(onnx_fp32, torch_parts):
    sample, cond = randn(5, 4, 8, 8), randn(5, 8, 32, seed=1)
    t = torch.full((5,), 500)
    _, deep = torch_parts.split_unet(sample, t, cond, torch.ones(5, dtype=torch.bool), None)
    counter = count_rows(onnx_fp32)
    try:
        onnx_fp32.split_unet(sample, t, cond, torch.tensor([True, False, False, True, False]), deep)
        onnx_fp32.split_unet(sample, t, cond, torch.zeros(5, dtype=torch.bool), deep)
    finally:
        counter.close()
    assert counter.rows == {SHALLOW_DOWN: 10, DEEP: 2, SHALLOW_UP: 10}


# ------------------------------------------------------------------------------------------------ pictures
@pytest.mark.parametrize("interval", [2, 3])
def test_documents_with_a_cache_interval_paint_on_onnx_as_on_torch(onnx_fp32, interval, caplog):
    model = tiny_model()
    reqs = [request("how to grow tomatoes", seed=11, max_new_tokens=40, max_images=2, steps=6,
                    cache_interval=interval),
            request("how to bake bread", seed=5, max_new_tokens=30, max_images=1, guidance=1.0, steps=6,
                    cache_interval=interval)]
    want = Generator(model).generate(reqs)
    counter = count_rows(onnx_fp32)
    try:
        with caplog.at_level(logging.WARNING):
            got = Generator(model, components=onnx_fp32).generate(reqs)
    finally:
        counter.close()
    full_steps = Generator(model, components=onnx_fp32).generate(
        [request(r.prompt, seed=r.params.seed, max_new_tokens=r.params.max_new_tokens, max_images=r.params.max_images,
                 guidance=r.params.guidance, steps=6) for r in reqs])
    assert not [r for r in caplog.records if "cache_interval" in r.getMessage()]  # no fallback
    pictures = [x for doc in want for x in doc.images]
    assert len(pictures) >= 2 and want[1].images  # guided and unguided pictures were painted
    for a, b, plain in zip(got, want, full_steps):
        assert a.text == b.text and len(a.images) == len(b.images)
        assert a.params["cache_interval"] == interval
        for x, y, z in zip(a.images, b.images, plain.images):
            assert max_pixel_diff(x.image, y.image) <= 2  # of 255, as the ONNX-vs-torch document test
            assert max_pixel_diff(x.image, z.image) > 2  # the cache changed the picture: it was used
    # every row ran the shallow graphs every step; the deep one at steps 0, N, 2N, ... only
    assert counter.rows[SHALLOW_DOWN] == counter.rows[SHALLOW_UP] > 0
    assert counter.rows[DEEP] * 6 == counter.rows[SHALLOW_DOWN] * len(range(0, 6, interval))


def test_documents_guided_and_cached_part_of_the_way_paint_on_onnx_as_on_torch(onnx_fp32):
    """guidance_until and cache_until (issue 32) change which rows and graphs a step runs, on ONNX Runtime too."""
    model = tiny_model()
    reqs = [request("how to grow tomatoes", seed=11, max_new_tokens=40, max_images=2, steps=8, cache_interval=2,
                    cache_until=0.5, guidance_until=0.75),
            request("how to bake bread", seed=5, max_new_tokens=30, max_images=1, steps=8, guidance_until=0.25)]
    want = Generator(model).generate(reqs)
    got = Generator(model, components=onnx_fp32).generate(reqs)
    assert sum(len(d.images) for d in want) >= 2 and all(d.images for d in want)
    for a, b in zip(got, want, strict=True):
        assert a.text == b.text and len(a.images) == len(b.images)
        assert (a.params["guidance_until"], a.params["cache_until"]) == \
            (b.params["guidance_until"], b.params["cache_until"])
        for x, y in zip(a.images, b.images, strict=True):
            assert max_pixel_diff(x.image, y.image) <= 2  # of 255, as the ONNX-vs-torch document test
    # each picture of the first document alone: steps 0-5 guided (two rows), steps 1 and 3 reuse the deep feature
    counter = count_rows(onnx_fp32)
    try:
        alone = Generator(model, components=onnx_fp32).generate(reqs[:1])[0]
    finally:
        counter.close()
    pictures = len(alone.images)
    assert pictures == len(want[0].images) and pictures > 0
    assert counter.rows[SHALLOW_DOWN] == counter.rows[SHALLOW_UP] == pictures * (6 * 2 + 2 * 1)
    assert counter.rows[DEEP] == pictures * (4 * 2 + 2 * 1)  # full passes at steps 0, 2, 4, 5 (guided), 6, 7


def test_pictures_at_different_phases_in_one_call_end_as_each_alone_and_as_on_torch(onnx_fp32, torch_parts):
    model = tiny_model()
    gen = Generator(model)
    head = model.head
    cond = randn(4, model.special.num_dream_queries, head.unet.config.cross_attention_dim)
    requests = [ImageRequest(cond=cond[i], uncond=gen.painter.unconditional(), seed=i, steps=(7, 6, 8, 5)[i],
                             guidance=(7.5, 1.0, 3.0, 2.0)[i], scheduler=("ddpm", "ddim", "dpm-solver", "ddpm")[i],
                             height=64, width=64, cache_interval=(2, 3, 1, 3)[i]) for i in range(4)]

    with torch.no_grad():
        by_itself = paint_alone(model, requests, onnx_fp32)
        # they join a step apart: calls mix full passes and reuse
        (on_onnx, onnx_phases), (on_torch, torch_phases) = (paint_joined(model, requests, parts, lambda p: p.full_pass)
                                                            for parts in (onnx_fp32, torch_parts))
    assert any(len(set(phase)) == 2 for phase in onnx_phases) and onnx_phases == torch_phases
    for a, b, c in zip(on_onnx, by_itself, on_torch):
        assert int(((a - b).abs() * 255).max().round()) <= 1
        assert int(((a - c).abs() * 255).max().round()) <= 2


def test_the_document_and_its_pngs_record_the_interval_painted_on_onnx(onnx_fp32):
    doc = Generator(tiny_model(), components=onnx_fp32).generate(
        [request("how to grow tomatoes", seed=11, max_new_tokens=40, max_images=1, steps=4, cache_interval=3)])[0]
    assert doc.params["cache_interval"] == 3 and doc.images
    data = encode_png(doc, doc.images[0])
    assert read_png_parameters(data)["params"]["cache_interval"] == 3


# ------------------------------------------------------------------------------------------------ the cache
def test_a_second_load_finds_the_cut_in_the_cache_and_exports_nothing(cache, graphs, monkeypatch):
    exported = []
    real = build_module.export_part
    monkeypatch.setattr(build_module, "export_part", lambda *a, **k: exported.append(a[1]) or real(*a, **k))
    components, line = select_backend("onnx", tiny_model(), cache=cache, threads=1)
    assert exported == [] and f"from the cache in {cache.root}" in line
    assert components.split_unet is not None and "the UNet's cut for cache_interval" in line
    assert {p: str(s.path) for p, s in components.sessions.items()} == \
        {p: str(g.file("model.onnx")) for p, g in graphs.items()}
    found, _ = find_onnx_graphs(tiny_model(), "fp32", cache)
    assert tuple(found) == tuple(graphs)


def test_a_cache_without_the_cut_paints_full_steps_and_says_so(cache, graphs, tmp_path, monkeypatch, caplog):
    """A cache built before the cut existed: the backend loads, warns, and pictures take full steps."""
    old = EngineCache(tmp_path / "engines")
    shutil.copytree(cache.root, old.root)
    for part in SPLIT_PARTS:
        shutil.rmtree(old.path(graphs[part].entry))
    found, _ = find_onnx_graphs(tiny_model(), "fp32", old)
    assert tuple(found) == ("unet", "vae_decoder", "vision")  # auto still picks ONNX Runtime
    monkeypatch.setattr(diffusion, "_warned_no_split", False)
    with caplog.at_level(logging.WARNING):
        components, _ = select_backend("onnx", tiny_model(), cache=old, no_build=True, threads=1)
        assert components.split_unet is None
        doc = Generator(tiny_model(), components=components).generate(
            [request("how to grow tomatoes", seed=11, max_new_tokens=40, max_images=1, steps=4, cache_interval=2)])[0]
    messages = [r.getMessage() for r in caplog.records]
    assert any("unet_shallow_down" in m and "not built" in m and "will paint full UNet steps" in m for m in messages)
    assert "painting with full UNet steps instead" in " ".join(messages) and doc.images
    plain = Generator(tiny_model(), components=components).generate(
        [request("how to grow tomatoes", seed=11, max_new_tokens=40, max_images=1, steps=4)])[0]
    assert max_pixel_diff(doc.images[0].image, plain.images[0].image) == 0


# ------------------------------------------------------------------------------------------------ TensorRT
@pytest.mark.parametrize("part", SPLIT_PARTS)
def test_cut_profiles_bound_every_input_and_the_portable_graphs_run_at_their_ends(cache, part):
    """The profiles TensorRT builds the cut with: every input bounded, and each end (min, opt, max) a set of
    shapes the portable graph (the one TensorRT parses) runs at, outputs sized by split_shapes."""
    model = tiny_model()
    portable = ensure_onnx_graphs(model, "fp32", cache, flavor="portable")
    session = GraphSession(portable[part].file("model.onnx"), ["CPUExecutionProvider"])
    limits = EngineLimits(max_batch=2, image_size=64)
    (profile,) = profiles_for(model, part, limits)
    assert list(profile) == [i.name for i in session.session.get_inputs()]
    for end, (batch, side) in enumerate(zip((1, 2, 4), latent_range(model, limits))):
        feeds = {name: (torch.full(ends[end], 500.0) if name == "timestep" else randn(*ends[end]))
                 for name, ends in profile.items()}
        assert all(shape[0] == batch for shape in (t.shape for t in feeds.values()))  # guidance doubles max_batch
        outputs = split_shapes(model.head.unet, batch, side, side)
        outputs["out_sample"] = (batch, 4, side, side)
        session.run(feeds, {name: outputs[name] for name in split_io(model, part).outputs})


@pytest.fixture
def standin_tensorrt(monkeypatch):
    def install(trt):
        monkeypatch.setattr(tensorrt_backend, "require_tensorrt", lambda model=None: trt)
        monkeypatch.setattr(tensorrt_backend, "compute_capability", lambda device=None: "sm_90")
        return trt
    return install


def test_tensorrt_engines_of_the_cut_are_built_from_the_portable_graphs_once(cache, standin_tensorrt):
    trt = standin_tensorrt(StandInTensorRT())
    engines = tensorrt_backend.ensure_tensorrt_engines(tiny_model(), "fp32", cache, limits=EngineLimits(max_batch=2))
    assert tuple(engines) == model_parts(tiny_model()) and all(e.built for e in engines.values())
    portable = ensure_onnx_graphs(tiny_model(), "fp32", cache, no_build=True, flavor="portable")
    assert trt.parsed == [str(portable[part].file("model.onnx")) for part in engines]
    assert engines[DEEP].file("engine.plan").read_bytes() == b"plan of emb,encoder_hidden_states,skip_0"
    again = tensorrt_backend.ensure_tensorrt_engines(tiny_model(), "fp32", cache, no_build=True)
    assert set(again) == set(engines) and not any(e.built for e in again.values())
    assert len(trt.parsed) == len(engines)  # nothing parsed or built again


def test_a_cut_tensorrt_cannot_build_leaves_the_engines_without_it(tmp_path, standin_tensorrt, caplog):
    standin_tensorrt(StandInTensorRT(unparsable=("unet_deep",)))
    with caplog.at_level(logging.WARNING):
        engines = tensorrt_backend.ensure_tensorrt_engines(tiny_model(), "fp32", EngineCache(tmp_path),
                                                           limits=EngineLimits(max_batch=2))
    assert tuple(engines) == ("unet", "vae_decoder", "vision")  # the cut whole or not at all: full steps
    assert any("TensorRT cannot parse" in r.getMessage() and "unet_deep" in r.getMessage()
               and "will paint full UNet steps" in r.getMessage() for r in caplog.records)
