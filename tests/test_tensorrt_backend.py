"""What of the TensorRT backend runs without a GPU: its profiles match the graphs, and the builder is driven as
NVIDIA's API wants it (checked against tests/tensorrt_standin.py, a recording stand-in for `tensorrt`, since the real one cannot be
installed here). The engines themselves run only on a GPU machine with TensorRT (not the one scripts/gpu_run.sh runs on)."""
import pytest

from dreamgen.engines import EngineLimits
from dreamgen.engines.graphs import PARTS, graph_io
from dreamgen.engines.profiles import outside_profile, profiles_for
from dreamgen.engines.tensorrt_backend import build_engine
from dreamgen.errors import EngineError
from tests.helpers import tiny_model
from tests.tensorrt_standin import StandInTensorRT


@pytest.mark.parametrize("part", PARTS)
def test_profiles_bound_every_input_of_the_graph(part):
    model = tiny_model()
    inputs = set(graph_io(model, part).inputs)
    for profile in profiles_for(model, part, EngineLimits(max_batch=2)):
        assert set(profile) == inputs
        for name, (lo, opt, hi) in profile.items():
            assert len(lo) == len(opt) == len(hi)
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), name


def test_a_shape_outside_the_profile_is_named():
    (profile,) = profiles_for(tiny_model(), "unet", EngineLimits(max_batch=2))
    assert outside_profile({"sample": (4, 4, 8, 8), "timestep": (4,)}, profile) is None
    assert outside_profile({"sample": (6, 4, 8, 8)}, profile) == \
        "sample has shape (6, 4, 8, 8); the engine takes (1, 4, 2, 2) to (4, 4, 8, 8)"


def test_build_engine_drives_the_builder_as_documented(tmp_path):
    # a static input (here a timestep traced as (1,), as graphs-v1 had it) gets no profile; the dynamic ones do
    trt = StandInTensorRT([("sample", (-1, 4, -1, -1)), ("timestep", (1,)), ("encoder_hidden_states", (-1, 8, 32))])
    profiles = profiles_for(tiny_model(), "unet", EngineLimits(max_batch=2))
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"old")
    build_engine(trt, tmp_path / "model.onnx", tmp_path / "engine.plan", profiles, timing)
    assert trt.calls[0] == ("network", 1 << 5)  # strongly typed: precision comes from the graph
    assert trt.calls[1] == ("parse", str(tmp_path / "model.onnx"))
    assert ("timing_cache_in", b"old") in trt.calls and ("set_timing_cache", False) in trt.calls
    shaped = [call[1] for call in trt.calls if call[0] == "set_shape"]
    assert shaped == ["sample", "encoder_hidden_states"]
    assert trt.calls[-1] == ("build", 3)
    assert (tmp_path / "engine.plan").read_bytes() == b"plan of encoder_hidden_states,sample"
    assert timing.read_bytes() == b"old+new"  # the timing cache grows for the next build
    assert [p.name for p in tmp_path.iterdir()].count("timing.cache") == 1  # no partial file left behind


def test_a_graph_tensorrt_cannot_parse_is_an_error_naming_the_cause(tmp_path):
    trt = StandInTensorRT([], unparsable=("model.onnx",))
    with pytest.raises(EngineError, match=r"TensorRT cannot parse .*model.onnx: Unsupported operator Foo"):
        build_engine(trt, tmp_path / "model.onnx", tmp_path / "engine.plan", [], tmp_path / "timing.cache")
