"""The Python side of bench/run-serve: two servers of a model hone published, the ONNX
export one of them runs, and the machine's matrix-multiply speed.

  pytorch  FastAPI + uvicorn (one process, one worker) + PyTorch: the published
           weights in bench/reference.py's Classifier (transformers' BertModel, SDPA
           attention, mean pooling over real tokens, the linear head), eval mode under
           torch.inference_mode, torch.set_num_threads(--threads).
  onnx     the same server around ONNX Runtime (CPU execution provider,
           intra_op_num_threads=--threads) on the graph `export` wrote.
  export   torch.onnx.export of encoder + pooling + head as one graph with dynamic
           batch and sequence axes; checks it against PyTorch before writing it.
  limit    the encoder's FLOPs per input for given texts (from config.json and their
           token counts) and the sgemm GFLOP/s of torch.mm on --threads threads.

Both servers answer hone's predict request and response —
POST /v1/models/{model}/predict {"inputs": [...]} →
{"model", "predictions": [{"label", "score", "scores"}]} — so one load definition hits
all three. They tokenize as hone does: the model's tokenizer.json (the Rust tokenizers
library, as transformers' fast tokenizer), its stored padding replaced by padding to
the longest text of the request, truncation at hone_model.json's max_seq_len. A
request is handled inside the event loop (an `async` endpoint), so one forward pass
runs at a time on --threads threads: FastAPI's thread pool would run several at once
on the same two cores. A server prints `listening on 127.0.0.1:PORT` (port 0 picks a
free one) once its model is loaded.
"""

import argparse
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


# --- the published model ---------------------------------------------------------------

def read_meta(model_dir: Path) -> dict:
    """hone_model.json, refused unless it is what the Python side reproduces."""
    meta = json.loads((model_dir / "hone_model.json").read_text())
    supported = {"modality": "text", "task_type": "classification", "head": "linear",
                 "pooling": "mean", "text_pairs": False}
    for key, value in supported.items():
        if meta.get(key, value) != value:
            sys.exit(f"{model_dir}: {key} is {meta[key]!r}; the Python servers only "
                     f"reproduce {key} {value!r}")
    return meta


class TextEncoder:
    """Texts → padded numpy arrays, as hone tokenizes for predict."""

    def __init__(self, model_dir: Path, max_seq_len: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        padding = self.tokenizer.padding or {}
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_seq_len)
        self.tokenizer.enable_padding(pad_id=padding.get("pad_id", 0),
                                      pad_token=padding.get("pad_token", "[PAD]"))

    def __call__(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        return {name: np.array([getattr(e, attr) for e in encodings], dtype=np.int64)
                for name, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                                   ("token_type_ids", "type_ids"))}

    def token_counts(self, texts):
        return [sum(e.attention_mask) for e in self.tokenizer.encode_batch(texts)]


def load_classifier(model_dir: Path, num_labels: int, attn: str):
    """bench/reference.py's Classifier with every weight of hone's model.safetensors:
    the encoder's under their checkpoint names, the head's under `head.`. Eval mode."""
    import torch
    import transformers
    from safetensors.torch import load_file
    from torch import nn

    import reference

    transformers.utils.logging.disable_progress_bar()
    model = reference.Classifier(model_dir, attn)
    model.head = nn.Linear(model.encoder.config.hidden_size, num_labels)
    weights = {(name if name.startswith("head.") else f"encoder.{name}"): tensor
               for name, tensor in load_file(model_dir / "model.safetensors").items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    if set(missing) - buffers or unexpected:
        sys.exit(f"{model_dir}/model.safetensors does not fit the classifier: missing "
                 f"{sorted(set(missing) - buffers)}, unexpected {sorted(unexpected)}")
    model.eval()
    torch.set_grad_enabled(False)
    return model


# --- the servers -----------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def serve(model_id: str, labels, predict, port: int):
    """Serves `predict` (texts → probabilities [n, labels]) as hone's predict route."""
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, Field

    class PredictRequest(BaseModel):
        inputs: list[str] = Field(min_length=1, max_length=256)

    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/v1/models/{model}/predict")
    async def predict_route(model: str, request: PredictRequest):
        if model != model_id:
            raise HTTPException(status_code=404, detail=f"no model {model}")
        probabilities = predict(request.inputs).tolist()
        predictions = []
        for row in probabilities:
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append({"label": labels[best], "score": row[best],
                                "scores": dict(zip(labels, row))})
        return {"model": model_id, "predictions": predictions}

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(
        sockets=[sock])


def serve_pytorch(args):
    import torch

    torch.set_num_threads(args.threads)
    meta = read_meta(args.model_dir)
    encode = TextEncoder(args.model_dir, meta["max_seq_len"])
    model = load_classifier(args.model_dir, len(meta["labels"]), "sdpa")

    def predict(texts):
        with torch.inference_mode():
            batch = {k: torch.from_numpy(v) for k, v in encode(texts).items()}
            return torch.softmax(model(**batch), dim=-1).numpy()

    serve(args.model_id, meta["labels"], predict, args.port)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def serve_onnx(args):
    meta = read_meta(args.model_dir)
    encode = TextEncoder(args.model_dir, meta["max_seq_len"])
    session = ort_session(args.onnx, args.threads)

    def predict(texts):
        return softmax(session.run(["logits"], encode(texts))[0])

    serve(args.model_id, meta["labels"], predict, args.port)


# --- export and limit ------------------------------------------------------------------

def export(args):
    import torch

    torch.set_num_threads(args.threads)
    meta = read_meta(args.model_dir)
    encode = TextEncoder(args.model_dir, meta["max_seq_len"])
    model = load_classifier(args.model_dir, len(meta["labels"]), "sdpa")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = {k: torch.from_numpy(v) for k, v in
              encode(["a short one", "and a longer example sentence, with padding"]).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (the torch.export one needs onnxscript) warns that it is
    # legacy and that traced Python conditions become constants; the check below is
    # what says whether the graph is right.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, tuple(sample[n] for n in names), str(args.out), dynamo=False,
            input_names=names, output_names=["logits"], opset_version=17,
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                          "logits": {0: "batch"}})
    # The same answers as PyTorch, with and without padding, for 1 and many texts.
    session = ort_session(args.out, args.threads)
    checks = [["one text alone"], ["two texts", "of quite different lengths, so padded"],
              [f"sentence number {i} " * (i % 7 + 1) for i in range(32)]]
    worst = 0.0
    for texts in checks:
        batch = encode(texts)
        expected = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
        worst = max(worst, float(np.abs(session.run(["logits"], batch)[0] - expected).max()))
    if worst > 1e-4:
        sys.exit(f"{args.out}: ONNX Runtime's logits differ from PyTorch's by {worst:.2e}")
    print(f"serve_python: exported {args.out} (logits within {worst:.1e} of PyTorch)",
          file=sys.stderr)


def encoder_flops(config: dict, tokens: int) -> float:
    """Multiply-adds ×2 of one input of `tokens` tokens through the encoder: per layer
    the Q, K, V and output projections, the two feed-forward matrices, and attention's
    scores and weighted sum."""
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    intermediate = config["intermediate_size"]
    per_layer = (2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate)
                 + 4 * tokens * tokens * hidden)
    return float(layers * per_layer)


def sgemm_gflops(hidden: int, intermediate: int, rows: int, threads: int) -> dict:
    """torch.mm at the encoder's shapes ([rows, hidden] by its weight matrices), timed
    on `threads` threads; the aggregate weighs them as one layer does."""
    import torch

    torch.set_num_threads(threads)
    shapes = {"qkvo": (hidden, hidden, 4), "ffn_up": (hidden, intermediate, 1),
              "ffn_down": (intermediate, hidden, 1)}
    result, total_flops, total_s = {}, 0.0, 0.0
    for name, (k, n, per_layer) in shapes.items():
        a, b = torch.randn(rows, k), torch.randn(k, n)
        out = torch.empty(rows, n)
        for _ in range(5):
            torch.mm(a, b, out=out)
        repeats, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            torch.mm(a, b, out=out)
            repeats += 1
        seconds = (time.perf_counter() - start) / repeats
        flops = 2.0 * rows * k * n
        result[name] = round(flops / seconds / 1e9, 2)
        total_flops += per_layer * flops
        total_s += per_layer * seconds
    result["encoder_mix"] = round(total_flops / total_s / 1e9, 2)
    return result


def limit(args):
    meta = read_meta(args.model_dir)
    config = json.loads((args.model_dir / "config.json").read_text())
    encode = TextEncoder(args.model_dir, meta["max_seq_len"])
    passes = {}
    for name, texts in json.loads(args.texts.read_text()).items():
        counts = encode.token_counts(texts)
        passes[name] = {"mean_tokens": sum(counts) / len(counts),
                        "encoder_flops_per_input":
                            sum(encoder_flops(config, c) for c in counts) / len(counts)}
    result = {
        "config": {k: config[k] for k in ("num_hidden_layers", "hidden_size",
                                          "intermediate_size")},
        "passes": passes,
        "sgemm_threads": args.threads,
        "sgemm_rows": args.rows,
        "sgemm_gflops": sgemm_gflops(config["hidden_size"], config["intermediate_size"],
                                     args.rows, args.threads),
    }
    print(json.dumps(result))


def main():
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, run, help_text in (
            ("pytorch", serve_pytorch, "serve with PyTorch"),
            ("onnx", serve_onnx, "serve with ONNX Runtime"),
            ("export", export, "write the ONNX graph"),
            ("limit", limit, "FLOPs per input and sgemm GFLOP/s, JSON on stdout")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model-dir", type=Path, required=True,
                       help="a model directory hone published")
        p.add_argument("--threads", type=int, default=2)
        commands[name] = (p, run)
    for name in ("pytorch", "onnx"):
        commands[name][0].add_argument("--model-id", required=True)
        commands[name][0].add_argument("--port", type=int, default=0)
    commands["onnx"][0].add_argument("--onnx", type=Path, required=True)
    commands["export"][0].add_argument("--out", type=Path, required=True)
    commands["limit"][0].add_argument("--texts", type=Path, required=True,
                                      help='JSON {"pass name": [texts], …}')
    commands["limit"][0].add_argument("--rows", type=int, default=1024,
                                      help="rows of the timed matrices")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    commands[args.command][1](args)


if __name__ == "__main__":
    main()
