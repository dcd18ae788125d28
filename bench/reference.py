"""PyTorch reference for hone's training and prediction throughput.

Does in Python the work hone's Rust path does in tch, so that both can be measured in
one run on one machine: a BERT encoder (transformers, SDPA attention, as hone's
bert.rs) + mean pooling + dropout(0.1) + Linear(hidden, 2), trained with
cross-entropy, AdamW (lr 2e-5, weight decay 0.01, none on biases and LayerNorm, as
hone) and gradient-norm clipping at 1.0. Every input is padded or truncated to exactly
--seq-len tokens, so both sides push identical shapes.

  train:   tokenized up front (not timed); --warmup steps, then --train-steps timed
           full steps (forward, backward, clip, optimizer step), train mode.
  predict: eval mode under torch.inference_mode; each batch times tokenization +
           forward + softmax, as a predict request would.

Inputs are real sentences: the text column of the Rotten Tomatoes corpus that
scripts/setup installs, the first batch_size * train_steps rows (cycled if fewer),
label 1 for "fresh" and 0 otherwise.

Run from the repository root after scripts/setup-python:
    .venv/bin/python bench/reference.py --threads 2 --json /tmp/reference.json
"""

import argparse
import bz2
import csv
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NUM_LABELS = 2


class Classifier(nn.Module):
    """Encoder → mean pooling over real tokens → dropout → linear head."""

    def __init__(self, model_dir: Path, attn_implementation: str):
        super().__init__()
        self.encoder = transformers.AutoModel.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=attn_implementation,
            add_pooling_layer=False)
        hidden = self.encoder.config.hidden_size
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, NUM_LABELS)

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.head(self.dropout(pooled))


def load_rows(path: Path, n: int):
    """The first n (text, label) rows of the corpus, cycled if it has fewer."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [(r["text"], 1 if r["category"] == "fresh" else 0)
                for r in csv.DictReader(f)]
    if not rows:
        sys.exit(f"{path}: no rows")
    return list(itertools.islice(itertools.cycle(rows), n))


def param_groups(model: nn.Module, weight_decay: float):
    """AdamW groups as transformers' Trainer (and hone) make them."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-dir", type=Path,
                        default=ROOT / ".deps/models/all-MiniLM-L6-v2",
                        help="Hugging Face model directory")
    parser.add_argument("--data", type=Path,
                        default=ROOT / ".deps/data/rotten_tomatoes_corpus.csv.bz2",
                        help="CSV (bz2) with a text and a category column")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads; default: torch's own choice")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch")
    parser.add_argument("--seq-len", type=int, default=64,
                        help="every input padded/truncated to exactly this many tokens")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--predict-batches", type=int, default=20,
                        help="timed predict batches")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps (and predict batches) before measuring")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                        help="transformers attn_implementation")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed (head, dropout)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    for name in ("batch_size", "seq_len", "train_steps", "predict_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")

    transformers.utils.logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    model = Classifier(args.model_dir, args.attn).to(device)

    def encode(texts):
        return tokenizer(texts, padding="max_length", truncation=True,
                         max_length=args.seq_len, return_tensors="pt")

    rows = load_rows(args.data, args.batch_size * args.train_steps)
    texts = [t for t, _ in rows]
    labels = torch.tensor([y for _, y in rows])
    enc = encode(texts)  # up front: tokenization is not part of the training time
    assert enc["input_ids"].shape == (len(rows), args.seq_len)
    batches = []
    for i in range(args.train_steps):
        s = slice(i * args.batch_size, (i + 1) * args.batch_size)
        batches.append(({k: v[s].to(device) for k, v in enc.items()}, labels[s].to(device)))

    # --- training -------------------------------------------------------------------
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=2e-5)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def train_step(batch, target):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(**batch), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    for i in range(args.warmup):
        train_step(*batches[i % len(batches)])
    start = time.perf_counter()
    for batch, target in batches:
        loss = train_step(batch, target)
    final_loss = loss.item()  # waits for the last step on an asynchronous device
    train_s = time.perf_counter() - start
    train_sps = args.batch_size * args.train_steps / train_s

    # --- prediction -----------------------------------------------------------------
    model.eval()
    cycled = itertools.cycle(texts)
    predict_texts = [list(itertools.islice(cycled, args.batch_size))
                     for _ in range(args.predict_batches)]

    def predict(batch_texts):
        batch = {k: v.to(device) for k, v in encode(batch_texts).items()}
        return torch.softmax(model(**batch), dim=-1).cpu()

    with torch.inference_mode():
        for i in range(args.warmup):
            predict(predict_texts[i % len(predict_texts)])
        start = time.perf_counter()
        for batch_texts in predict_texts:
            probs = predict(batch_texts)
        predict_s = time.perf_counter() - start
    assert probs.shape == (args.batch_size, NUM_LABELS)
    predict_sps = args.batch_size * args.predict_batches / predict_s

    threads = torch.get_num_threads()
    print(f"pytorch {torch.__version__} threads={threads} batch={args.batch_size} "
          f"seq_len={args.seq_len} attn={args.attn}: "
          f"train {train_sps:.1f} samples/s ({args.train_steps} steps in {train_s:.2f}s, "
          f"final loss {final_loss:.4f}), "
          f"predict {predict_sps:.1f} samples/s ({args.predict_batches} batches "
          f"in {predict_s:.2f}s)")
    if args.json:
        result = {
            "impl": "pytorch",
            "torch": torch.__version__,
            "threads": threads,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "train_samples_per_s": train_sps,
            "predict_samples_per_s": predict_sps,
            "train_steps": args.train_steps,
            "predict_batches": args.predict_batches,
            "warmup": args.warmup,
            "attn_implementation": args.attn,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "model": args.model_dir.name,
            "final_loss": final_loss,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
