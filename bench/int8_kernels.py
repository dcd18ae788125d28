"""Which int8 Linear kernels of libtorch 2.13 pay on this CPU, and which hone can call.

hone reaches libtorch through tch's generated bindings, which cover ATen's native
functions but not the `quantized::` operators of the dispatcher. This times, on the
shape of MiniLM's feed-forward layer with 32 texts of 30 tokens ([960, 384] x
[384, 1536] + bias), the fp32 Linear against every int8 route:

  fp32                   torch.nn.functional.linear (MKL sgemm)
  quantized::linear_dynamic
                         fbgemm: weights int8 per channel, packed once; activations
                         quantized per call. What torch.ao's quantize_dynamic uses.
                         NOT in tch's bindings (a dispatcher op).
  _weight_int8pack_mm    ATen native, in tch: int8 weights, fp32 activations.
  _int_mm                ATen native, in tch: int8 x int8 -> int32, here with
                         per-row activation quantization around it.

Prints milliseconds per call (median of --repeat timings of --calls calls each), the
largest absolute error against fp32 and the relative one (||out - fp32|| / ||fp32||);
outputs are of order 1. Run from the repository root:

    .venv/bin/python bench/int8_kernels.py [--threads 2]
"""

import argparse
import statistics
import time

import torch


def timed(fn, calls, repeat):
    for _ in range(3):
        fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=960)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows, k, n = args.rows, 384, 1536
    x = torch.randn(rows, k)
    w = torch.randn(n, k) * 0.05
    b = torch.randn(n)
    reference = torch.nn.functional.linear(x, w, b)

    scales = w.abs().amax(1) / 127
    w_int8 = torch.round(w / scales[:, None]).to(torch.int8)
    w_int8_t = w_int8.t().contiguous()
    w_q = torch.quantize_per_channel(w, scales.double(), torch.zeros(n, dtype=torch.long),
                                     0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(w_q, b)

    def int_mm():
        s = x.abs().amax(1, keepdim=True) / 127
        acc = torch._int_mm(torch.round(x / s).to(torch.int8), w_int8_t)
        return acc.float() * s * scales + b

    routes = {
        "fp32 linear (in tch)": lambda: torch.nn.functional.linear(x, w, b),
        "quantized::linear_dynamic (fbgemm, not in tch)":
            # reduce_range: 7-bit activations, as quantize_dynamic uses on x86 (AVX2's
            # u8 x s8 multiply-add saturates int16 with all 8 bits).
            lambda: torch.ops.quantized.linear_dynamic(x, packed, True),
        "_weight_int8pack_mm (in tch)":
            lambda: torch._weight_int8pack_mm(x, w_int8, scales) + b,
        "_int_mm (in tch)": int_mm,
    }
    fp32_ms = None
    print(f"torch {torch.__version__}, {args.threads} threads, "
          f"[{rows}, {k}] x [{k}, {n}], engine {torch.backends.quantized.engine}")
    for name, fn in routes.items():
        ms = timed(fn, args.calls, args.repeat)
        fp32_ms = fp32_ms or ms
        out = fn()
        error = (out - reference).abs().max().item()
        relative = ((out - reference).norm() / reference.norm()).item()
        print(f"{name:50s} {ms:8.2f} ms  {fp32_ms / ms:6.2f}x fp32  "
              f"max |error| {error:.4f}  relative {relative:.4f}")


if __name__ == "__main__":
    main()
