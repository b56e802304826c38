"""Choosing a backend: --backend on the commands, DREAMGEN_BACKEND, the runner, and `dreamgen engines`.
TensorRT is made absent (or broken) on purpose, so these tests mean the same on a machine that has it."""
import builtins
import sys

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from dreamgen.engines import select_backend
from dreamgen.errors import EngineError
from tests.helpers import tiny_model

INSTALL = "pip install 'dreamgen[tensorrt]' --extra-index-url https://pypi.nvidia.com"
# the graphs of a model that deepcache can cut (engines/split_graphs.py)
ALL_PARTS = ("unet", "vae_decoder", "vision", "unet_shallow_down", "unet_deep", "unet_shallow_up")
QUICK = ["--steps", "2", "--max-new-tokens", "12", "--max-images", "1", "--model", "tiny-random"]  # the engines built


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


@pytest.fixture
def home(tmp_path, monkeypatch, no_tensorrt):
    monkeypatch.setenv("DREAMGEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DREAMGEN_BACKEND", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def built_home(tmp_path_factory):
    """A DREAMGEN_HOME where `dreamgen engines build --backend onnx` has run for tiny-random."""
    home = tmp_path_factory.mktemp("built") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DREAMGEN_HOME", str(home))
        result = CliRunner().invoke(cli, ["engines", "build", "--model", "tiny-random", "--backend", "onnx"])
    assert result.exit_code == 0, result.output
    return home, result.output



def test_tensorrt_absent_fails_clearly(home, tmp_path):
    result = CliRunner().invoke(cli, ["generate", "a day at the sea", "--backend", "tensorrt", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == ("Error: TensorRT backend unavailable: cannot import tensorrt (ModuleNotFoundError: "
                             f"import of tensorrt halted; None in sys.modules); install it with {INSTALL}\n")


def test_a_broken_tensorrt_install_fails_clearly(monkeypatch):
    real_import = builtins.__import__

    def import_with_missing_library(name, *args, **kwargs):
        if name == "tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(builtins, "__import__", import_with_missing_library)
    with pytest.raises(EngineError) as error:
        select_backend("tensorrt", tiny_model())
    assert str(error.value) == ("TensorRT backend unavailable: cannot import tensorrt (OSError: libnvinfer.so.10: "
                                f"cannot open shared object file: No such file or directory); install it with {INSTALL}")


def test_auto_falls_back_to_torch_when_nothing_is_built(home, tmp_path):
    result = CliRunner().invoke(cli, ["generate", "a day at the sea", "--backend", "auto", "--out", str(tmp_path)] + QUICK)
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("backend torch: PyTorch on cpu (auto: not tensorrt: TensorRT backend unavailable: "
                            "cannot import tensorrt")
    assert f"not onnx: no complete set of fp32 graphs for this model in {home / 'engines'}" in first


def test_engines_build_makes_every_graph(built_home):
    home, output = built_home
    lines = output.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"onnx {part} (fp32)" for part in ALL_PARTS]
    assert all(": built in " in line and str(home / "engines" / "onnx") in line for line in lines)


def test_engines_list_and_verify(built_home, monkeypatch):
    home, _ = built_home
    monkeypatch.setenv("DREAMGEN_HOME", str(home))
    listed = CliRunner().invoke(cli, ["engines", "list"])
    assert listed.exit_code == 0
    header, *rows = listed.output.splitlines()
    assert header.split() == ["BACKEND", "PART", "PRECISION", "FLAVOR", "MODEL", "SIZE", "CREATED", "PATH"]
    assert sorted(line.split()[1] for line in rows) == sorted(ALL_PARTS)
    assert all(line.split()[0] == "onnx" and line.split()[2] == "fp32" and line.split()[4] == "tiny-random"
               for line in rows)
    assert all(line.index(" MB") + 3 == header.index("SIZE") + 4 for line in rows)  # sizes right-aligned
    flavors = {line.split()[1]: line.split()[3] for line in rows}
    assert flavors == {"unet": "onnxruntime", "vae_decoder": "portable", "vision": "portable",
                       "unet_shallow_down": "onnxruntime", "unet_deep": "onnxruntime", "unet_shallow_up": "onnxruntime"}
    verified = CliRunner().invoke(cli, ["engines", "verify", "--model", "tiny-random"])
    assert verified.exit_code == 0, verified.output
    lines = verified.output.splitlines()
    # the cut's three graphs are checked together, as split_unet against torch's
    assert [line.split()[:3] for line in lines] == [["onnx", p, "fp32"] for p in ("unet", "vae_decoder", "vision",
                                                                                 "unet_cut")]
    assert all(line.endswith("(tolerance 1e-04) ok") for line in lines)


def test_auto_picks_onnx_where_engines_are_built(built_home, monkeypatch, no_tensorrt, tmp_path):
    home, _ = built_home
    monkeypatch.setenv("DREAMGEN_HOME", str(home))
    monkeypatch.setenv("DREAMGEN_BACKEND", "auto")
    result = CliRunner().invoke(cli, ["generate", "a day at the sea", "--out", str(tmp_path)] + QUICK)
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("backend onnx: ONNX Runtime ")
    assert f"from the cache in {home / 'engines'} (auto: this model's fp32 graphs are in the cache; not tensorrt: " in first


def test_run_and_the_runner_honour_the_backend(built_home, monkeypatch, tmp_path):
    from dreamgen.jobs.run import job_generator
    from dreamgen.jobs.spec import JobConfig

    home, _ = built_home
    monkeypatch.setenv("DREAMGEN_HOME", str(home))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a day at the sea\n")
    heard = []
    generator = job_generator(JobConfig(prompts=str(prompts), backend="onnx"), report=heard.append)
    assert generator.components.name == "onnx" and heard[0].startswith("backend onnx: ONNX Runtime")

    result = CliRunner().invoke(cli, ["run", str(prompts), "--backend", "onnx", "--out", str(tmp_path / "out"),
                                      "--format", "md"] + QUICK)
    assert result.exit_code == 0, result.output
    assert "backend onnx: ONNX Runtime" in result.output and "1 done, 0 failed" in result.output


def test_unknown_backend_and_precision_are_named():
    with pytest.raises(EngineError, match="unknown backend 'cuda': use one of auto, torch, onnx, tensorrt"):
        select_backend("cuda", tiny_model())
    with pytest.raises(EngineError, match="unknown precision 'int8'"):
        select_backend("onnx", tiny_model(), precision="int8")
