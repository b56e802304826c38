"""The UNet's full-resolution self-attention on a CPU, the one op that decides the small configuration's picture
time: torch's ways of computing it against ONNX Runtime's fused kernel, as ratios to torch's default in one run.

    python bench/attention.py [--batch 2] [--threads 1]

The shape is the small bench UNet's first block at 64x64 latents: 4096 tokens, 8 heads of size 8 (64 channels;
diffusers reads the config's attention_head_dim as the number of heads). Batch 2 is one picture with guidance.
Every way is checked against torch's default (max abs difference printed), so a fast wrong answer shows.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS, HEADS, HEAD_SIZE = 4096, 8, 8


def seconds(fn, repeats: int = 3) -> tuple[float, object]:
    out = fn()  # warm-up, and the answer to check
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats, out


def chunked_softmax(q, k, v, rows: int = 1024):
    """Scores for `rows` queries at a time (bounded memory), softmax, values: the textbook way."""
    b, h, n, d = q.shape
    qs, ks, vs = (q * d ** -0.5).reshape(b * h, n, d), k.reshape(b * h, n, d).transpose(1, 2), v.reshape(b * h, n, d)
    out = torch.empty(b * h, n, d)
    for i in range(0, n, rows):
        torch.bmm(torch.bmm(qs[:, i:i + rows], ks).softmax(-1), vs, out=out[:, i:i + rows])
    return out.view(b, h, n, d)


def onnxruntime_fused(batch: int, threads: int):
    """One com.microsoft MultiHeadAttention node, as dreamgen's exported UNet graphs hold it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    width = HEADS * HEAD_SIZE
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, TOKENS, width]) for name in "qkvo"]
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=HEADS)
    model = helper.make_model(helper.make_graph([node], "attention", io[:3], io[3:]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, HEADS, TOKENS, HEAD_SIZE, generator=g) for _ in range(3))

    def flat(x):  # (B, H, N, d) -> (B, N, H*d), the layout of the ONNX graph
        return x.transpose(1, 2).reshape(args.batch, TOKENS, HEADS * HEAD_SIZE)

    def math_kernel():
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)

    session = onnxruntime_fused(args.batch, args.threads)
    feeds = {"q": flat(q).numpy(), "k": flat(k).numpy(), "v": flat(v).numpy()}
    ways = {
        "torch scaled_dot_product_attention (default: CPU flash kernel)": lambda: F.scaled_dot_product_attention(q, k, v),
        "torch scaled_dot_product_attention, math kernel": math_kernel,
        "torch bmm + softmax, 1024 query rows at a time": lambda: chunked_softmax(q, k, v),
        "torch scaled_dot_product_attention in bfloat16": lambda: F.scaled_dot_product_attention(
            q.bfloat16(), k.bfloat16(), v.bfloat16()).float(),
        "ONNX Runtime MultiHeadAttention (fused)": lambda: torch.from_numpy(session.run(None, feeds)[0]),
    }
    print(f"cpu, {args.threads} thread(s); batch {args.batch}, {TOKENS} tokens, {HEADS} heads of size {HEAD_SIZE}")
    print(f"{'way':64} {'ms':>8} {'vs default':>10} {'max |diff|':>10}")
    base_s, reference = None, None
    for name, fn in ways.items():
        s, out = seconds(fn)
        out = out if out.shape == (args.batch, TOKENS, HEADS * HEAD_SIZE) else flat(out)
        if base_s is None:
            base_s, reference = s, out
        diff = float(np.abs((out.float() - reference).numpy()).max())
        print(f"{name:64} {1000 * s:8.0f} {base_s / s:9.2f}x {diff:10.1e}")


if __name__ == "__main__":
    main()
