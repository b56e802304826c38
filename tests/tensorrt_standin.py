"""A stand-in for the `tensorrt` module: just the builder API engines/tensorrt_backend.py drives, recording each
call (the real module cannot be installed here: PyPI holds only stubs that fetch it from NVIDIA).

The network's inputs are the ones given, else read from the ONNX graph parsed, a dynamic size as -1 as TensorRT
reports it. A parse fails for a graph whose path holds one of `unparsable`. The plan it "builds" names the inputs
its first profile bounds, and the build refuses a dynamic input no profile bounds, as TensorRT does."""
from types import SimpleNamespace


class StandInTensorRT:
    __version__ = "10.0.standin"

    def __init__(self, inputs=None, unparsable=()):
        self.calls, self.parsed = [], []
        trt = self

        class Logger:
            WARNING = "warning"

            def __init__(self, severity):
                pass

        class Network:
            def __init__(self):
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class OnnxParser:
            num_errors = 1

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                trt.calls.append(("parse", path))
                if any(name in path for name in unparsable):
                    return False
                self.network.inputs += [SimpleNamespace(name=name, shape=shape)
                                        for name, shape in (inputs if inputs is not None else graph_inputs(path))]
                trt.parsed.append(path)
                return True

            def get_error(self, i):
                return "Unsupported operator Foo"

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                trt.calls.append(("set_shape", name, lo, opt, hi))
                self.shapes[name] = (lo, opt, hi)

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+new"

        class Config:
            builder_optimization_level = None

            def __init__(self):
                self.profiles = []

            def create_timing_cache(self, data):
                trt.calls.append(("timing_cache_in", data))
                self.cache = TimingCache(data)
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                trt.calls.append(("set_timing_cache", ignore_mismatch))

            def add_optimization_profile(self, profile):
                trt.calls.append(("profile",))
                self.profiles.append(profile)

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                trt.calls.append(("network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                trt.calls.append(("build", config.builder_optimization_level))
                bounded = set(config.profiles[0].shapes) if config.profiles else set()
                unbounded = {i.name for i in network.inputs if -1 in tuple(i.shape)} - bounded
                assert not unbounded, f"no profile bounds {sorted(unbounded)}"
                return b"plan of " + ",".join(sorted(bounded)).encode()

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)


def graph_inputs(path):
    import onnx

    for i in onnx.load(path, load_external_data=False).graph.input:
        yield i.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
