"""Transfer strategies, hone against PyTorch: accuracy, macro-F1 and wall time.

For each strategy (full fine-tuning, partial with the bottom layers frozen, feature
extraction) both sides train on the same real data with the same hyperparameters and
seed, in the same run, and predict the same held-out test set. bench/run-strategies
runs the whole thing; this script is its Python half, in four subcommands:

  plan    picks the data (a class-balanced train set and a disjoint test set of
          deduplicated Rotten Tomatoes snippets, fresh/rotten) and writes it, with the
          config of every strategy, to one JSON file that both sides read.
  train   the PyTorch (transformers) side: runs every strategy of a plan the way
          hone's `fine_tune` does and writes timings and test predictions.
  report  scores both sides' predictions with one piece of code, puts the timings
          side by side and prints the markdown table of BENCHMARKS.md.
  run     plan, then crates/hone-train/examples/strategies (release build), then
          train, then report, measuring how busy the rest of the machine was.

The recipe both sides follow (hone's train.rs): the pretrained encoder + mean pooling
over real tokens + dropout 0.1 + Linear(hidden, labels) initialised normal(0, 0.02)
with zero bias; cross-entropy; AdamW (betas 0.9/0.999, eps 1e-8, weight decay except on
biases and LayerNorm); linear warmup (warmup_ratio of all steps, rounded up) then
linear decay to 0, stepped per batch; gradient-norm clipping; each batch padded to
its longest text; the training set shuffled every epoch. Where the two differ by
design, hone runs its defaults as a job would and this side what a user's plain loop
does: hone's `full` and `partial` batch texts of similar length together (the API's
`group_by_length`, on by default) and its `partial` computes the frozen layers once
(see crates/hone-train/src/frozen.rs); this side draws random batches and runs every
layer every step.

  full                every weight trains.
  partial             the embeddings and the first `frozen_layers` encoder layers are
                      frozen (no gradient, not in the optimizer).
  partial_every_step  hone's `partial` as it ran before the frozen-layer cache and
                      length grouping (both off), to compare with in the same run;
                      this side runs it exactly as `partial`.
  feature_extraction  the encoder runs once, in eval mode without autograd, over the
                      training texts (shortest first, batches of max(batch_size, 32));
                      only the head trains on those cached features, with dropout on
                      them in train mode.

Times: `total_s` is the wall time of the training call — model loading,
tokenization, feature extraction and every epoch; `epoch_end_s[i]` is when epoch i+1
ended, from the same start (so epoch 1 includes the set-up and, for
feature_extraction, the extraction). Test prediction is timed separately.

Run from the repository root after scripts/setup-python:
    bench/run-strategies          # or: .venv/bin/python bench/strategies.py run
"""

import argparse
import bz2
import csv
import hashlib
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["rotten", "fresh"]
STRATEGIES = ("full", "partial", "partial_every_step", "feature_extraction")
HONE_BIN = ROOT / "target/release/examples/strategies"


# --- plan ------------------------------------------------------------------------------

def make_plan(args) -> dict:
    """The data and the configs both sides run; deterministic in its arguments."""
    raw = args.data.read_bytes()
    with bz2.open(args.data, "rt", encoding="utf-8", newline="") as f:
        rows = [(r["text"].strip(), r["category"]) for r in csv.DictReader(f)]
    # Deduplicate: one copy of each text; a text seen under both labels is dropped.
    seen: dict[str, set] = {}
    for text, category in rows:
        if text and category in LABELS:
            seen.setdefault(text, set()).add(category)
    by_label = {label: sorted(t for t, cats in seen.items() if cats == {label})
                for label in LABELS}
    rng = random.Random(args.data_seed)
    train, test = [], []
    for index, label in enumerate(LABELS):
        texts = by_label[label]
        need = args.train_per_class + args.test_per_class
        if len(texts) < need:
            sys.exit(f"{args.data}: {len(texts)} distinct {label!r} texts, {need} needed")
        rng.shuffle(texts)
        train += [(t, index) for t in texts[:args.train_per_class]]
        test += [(t, index) for t in texts[args.train_per_class:need]]
    rng.shuffle(train)
    rng.shuffle(test)
    return {
        "data": {
            "source": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT)
                          else args.data),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "selection": "fresh/rotten rows, texts stripped and deduplicated (a text "
                         "under both labels dropped), shuffled per class with "
                         "random.Random(data_seed): the first train_per_class for "
                         "training, the next test_per_class for testing",
            "data_seed": args.data_seed,
            "train_per_class": args.train_per_class,
            "test_per_class": args.test_per_class,
        },
        "labels": LABELS,
        "common": {
            "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len,
            "warmup_ratio": args.warmup_ratio,
            "weight_decay": 0.01,
            "grad_clip": 1.0,
            "seed": args.seed,
            "eval_batch_size": args.eval_batch_size,
        },
        "strategies": [
            {"name": "full", "epochs": args.full_epochs, "learning_rate": args.full_lr},
            {"name": "partial", "frozen_layers": args.frozen_layers,
             "epochs": args.partial_epochs, "learning_rate": args.partial_lr},
            {"name": "partial_every_step", "frozen_layers": args.frozen_layers,
             "epochs": args.partial_epochs, "learning_rate": args.partial_lr},
            {"name": "feature_extraction", "epochs": args.fe_epochs,
             "learning_rate": args.fe_lr},
        ],
        "train": {"texts": [t for t, _ in train], "labels": [y for _, y in train]},
        "test": {"texts": [t for t, _ in test], "labels": [y for _, y in test]},
    }


def add_plan_args(parser):
    parser.add_argument("--data", type=Path,
                        default=ROOT / ".deps/data/rotten_tomatoes_corpus.csv.bz2",
                        help="CSV (bz2) with text and category columns")
    parser.add_argument("--train-per-class", type=int, default=256)
    parser.add_argument("--test-per-class", type=int, default=250)
    parser.add_argument("--data-seed", type=int, default=0, help="picks the split")
    parser.add_argument("--seed", type=int, default=42,
                        help="training seed (head init, dropout, shuffle)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--full-epochs", type=int, default=4)
    parser.add_argument("--full-lr", type=float, default=1e-4)
    parser.add_argument("--partial-epochs", type=int, default=4)
    parser.add_argument("--partial-lr", type=float, default=1e-4)
    parser.add_argument("--frozen-layers", type=int, default=3)
    parser.add_argument("--fe-epochs", type=int, default=10)
    parser.add_argument("--fe-lr", type=float, default=1e-3)


def check_plan_args(parser, args):
    for name in ("train_per_class", "test_per_class", "batch_size", "eval_batch_size",
                 "max_seq_len", "full_epochs", "partial_epochs", "fe_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.frozen_layers < 0:
        parser.error("--frozen-layers must be >= 0")
    if not 0.0 <= args.warmup_ratio <= 1.0:
        parser.error("--warmup-ratio must be in [0, 1]")


def write_json(path: Path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


# --- train: the PyTorch side -----------------------------------------------------------

def train_side(plan: dict, model_dir: Path, threads, only) -> dict:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import transformers
    from torch import nn

    transformers.utils.logging.disable_progress_bar()
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    common = plan["common"]
    labels = plan["labels"]
    batch_size, eval_batch_size = common["batch_size"], common["eval_batch_size"]

    def collate(encoded, indices, pad_id):
        """Pads the examples at `indices` to their longest, as hone's `collate`."""
        longest = max(len(encoded[i]) for i in indices)
        ids = torch.full((len(indices), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), longest), dtype=torch.long)
        for row, i in enumerate(indices):
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "token_type_ids": torch.zeros_like(ids).to(device)}

    def pooled(encoder, batch):
        """Mean over real tokens, as sentence-transformers (and hone) pool."""
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def by_length(encoded):
        return sorted(range(len(encoded)), key=lambda i: len(encoded[i]))

    def param_groups(named, weight_decay):
        decay, no_decay = [], []
        for name, p in named:
            if p.requires_grad:
                (no_decay if name.endswith("bias") or "LayerNorm" in name
                 else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    results = []
    for strategy in plan["strategies"]:
        name = strategy["name"]
        if only and name not in only:
            continue
        print(f"pytorch: {name} ({strategy['epochs']} epochs, lr {strategy['learning_rate']})",
              file=sys.stderr, flush=True)
        torch.manual_seed(common["seed"])
        shuffle = torch.Generator().manual_seed(common["seed"])

        # --- the training call: everything from here to the last epoch is timed ---
        start = time.perf_counter()
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        encoder = transformers.AutoModel.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="sdpa",
            add_pooling_layer=False).to(device)
        head = nn.Sequential(nn.Dropout(encoder.config.hidden_dropout_prob),
                             nn.Linear(encoder.config.hidden_size, len(labels))).to(device)
        nn.init.normal_(head[1].weight, std=encoder.config.initializer_range)
        nn.init.zeros_(head[1].bias)
        pad_id = tokenizer.pad_token_id or 0

        def encode(texts):
            return tokenizer(texts, truncation=True, max_length=common["max_seq_len"],
                             padding=False, return_token_type_ids=False,
                             return_attention_mask=False)["input_ids"]

        train_ids = encode(plan["train"]["texts"])
        targets = torch.tensor(plan["train"]["labels"], device=device)
        n = len(train_ids)

        if name == "feature_extraction":
            for p in encoder.parameters():
                p.requires_grad_(False)
            encoder.eval()
            order, chunk = by_length(train_ids), max(batch_size, 32)
            with torch.no_grad():
                parts = [pooled(encoder, collate(train_ids, order[s:s + chunk], pad_id))
                         for s in range(0, n, chunk)]
            features = torch.empty((n, encoder.config.hidden_size), device=device)
            features[torch.tensor(order, device=device)] = torch.cat(parts)

            def logits_of(indices):
                return head(features[indices])
            trainable = list(head.named_parameters())
        else:
            if name in ("partial", "partial_every_step"):
                k = strategy["frozen_layers"]
                for module in [encoder.embeddings, *encoder.encoder.layer[:k]]:
                    for p in module.parameters():
                        p.requires_grad_(False)

            def logits_of(indices):
                return head(pooled(encoder, collate(train_ids, indices.tolist(), pad_id)))
            trainable = list(encoder.named_parameters()) + list(head.named_parameters())

        params = [p for _, p in trainable if p.requires_grad]
        optimizer = torch.optim.AdamW(param_groups(trainable, common["weight_decay"]),
                                      lr=strategy["learning_rate"], betas=(0.9, 0.999),
                                      eps=1e-8)
        steps_per_epoch = math.ceil(n / batch_size)
        total_steps = steps_per_epoch * strategy["epochs"]
        scheduler = transformers.get_linear_schedule_with_warmup(
            optimizer, math.ceil(common["warmup_ratio"] * total_steps), total_steps)
        loss_fn = nn.CrossEntropyLoss()
        if name != "feature_extraction":
            encoder.train()
        head.train()

        epoch_end_s, train_losses = [], []
        for _ in range(strategy["epochs"]):
            order = torch.randperm(n, generator=shuffle)
            loss_sum = 0.0
            for s in range(0, n, batch_size):
                indices = order[s:s + batch_size]
                loss = loss_fn(logits_of(indices.to(device)), targets[indices.to(device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if common["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(params, common["grad_clip"])
                optimizer.step()
                scheduler.step()
                value = loss.item()
                if not math.isfinite(value):
                    sys.exit(f"pytorch: {name}: the loss is {value}")
                loss_sum += value * len(indices)
            train_losses.append(loss_sum / n)
            epoch_end_s.append(time.perf_counter() - start)
        total_s = time.perf_counter() - start

        # --- test predictions, as hone's Classifier::predict: eval, shortest first ---
        start = time.perf_counter()
        encoder.eval()
        head.eval()
        test_ids = encode(plan["test"]["texts"])
        order = by_length(test_ids)
        predictions = [0] * len(test_ids)
        with torch.no_grad():
            for s in range(0, len(order), eval_batch_size):
                chunk = order[s:s + eval_batch_size]
                probs = torch.softmax(head(pooled(encoder, collate(test_ids, chunk, pad_id))),
                                      dim=-1).cpu()
                for i, p in zip(chunk, probs.argmax(-1).tolist()):
                    predictions[i] = p
        predict_s = time.perf_counter() - start
        results.append({
            **strategy,
            "total_s": total_s,
            "epoch_end_s": epoch_end_s,
            "train_losses": train_losses,
            "predict_s": predict_s,
            "predictions": predictions,
        })
        print(f"pytorch: {name}: {total_s:.1f}s, losses "
              + " ".join(f"{v:.3f}" for v in train_losses), file=sys.stderr, flush=True)
        del encoder, head, optimizer
    return {
        "impl": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "model": model_dir.name,
        "strategies": results,
    }


# --- report ----------------------------------------------------------------------------

def scores(truth, predicted, num_labels):
    """Accuracy and macro-F1 (scikit-learn's average="macro" over the labels that
    occur in truth or predictions)."""
    accuracy = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
    f1s = []
    for c in range(num_labels):
        tp = sum(t == c and p == c for t, p in zip(truth, predicted))
        fp = sum(t != c and p == c for t, p in zip(truth, predicted))
        fn = sum(t == c and p != c for t, p in zip(truth, predicted))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return accuracy, sum(f1s) / len(f1s)


def summarize(plan, side):
    out = {}
    truth = plan["test"]["labels"]
    for s in side["strategies"]:
        ends = s["epoch_end_s"]
        later = [b - a for a, b in zip(ends, ends[1:])]
        accuracy, macro_f1 = scores(truth, s["predictions"], len(plan["labels"]))
        out[s["name"]] = {
            "epochs": s["epochs"],
            "learning_rate": s["learning_rate"],
            "frozen_layers": s.get("frozen_layers"),
            "accuracy": accuracy,
            "macro_f1": macro_f1,
            "total_s": s["total_s"],
            "first_epoch_s": ends[0],
            "later_epoch_mean_s": sum(later) / len(later) if later else None,
            "predict_s": s["predict_s"],
            "final_train_loss": s["train_losses"][-1],
        }
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def report(plan, hone, pytorch, meta) -> dict:
    sides = {"hone": summarize(plan, hone), "pytorch": summarize(plan, pytorch)}
    if sides["hone"].keys() != sides["pytorch"].keys():
        sys.exit("report: the two sides ran different strategies")
    if hone["threads"] != pytorch["threads"]:
        sys.exit(f"report: hone ran {hone['threads']} threads, pytorch {pytorch['threads']}")
    rows = {}
    for name in sides["hone"]:
        h, p = sides["hone"][name], sides["pytorch"][name]
        rows[name] = {
            "hone": h, "pytorch": p,
            "hone_over_pytorch_time": {
                k: ratio(h[k], p[k])
                for k in ("total_s", "first_epoch_s", "later_epoch_mean_s", "predict_s")},
        }
    fe_speedup = {}
    if "full" in rows and "feature_extraction" in rows:
        for side in ("hone", "pytorch"):
            fe_speedup[side] = ratio(rows["full"][side]["later_epoch_mean_s"],
                                     rows["feature_extraction"][side]["later_epoch_mean_s"])
    # hone's partial against itself with the frozen-layer cache and length grouping
    # off (partial_every_step): later epochs and the whole job, before / after.
    partial_speedup = {}
    if "partial" in rows and "partial_every_step" in rows:
        before, after = rows["partial_every_step"]["hone"], rows["partial"]["hone"]
        partial_speedup = {k: ratio(before[k], after[k])
                           for k in ("later_epoch_mean_s", "total_s")}
    return {
        **meta,
        "threads": hone["threads"],
        "data": plan["data"],
        "train_examples": len(plan["train"]["texts"]),
        "test_examples": len(plan["test"]["texts"]),
        "common": plan["common"],
        "versions": {"hone_libtorch": hone.get("torch"), "torch": pytorch["torch"],
                     "transformers": pytorch["transformers"], "python": pytorch["python"]},
        "strategies": rows,
        # Mean time of an epoch after the first, full / feature_extraction.
        "full_over_feature_extraction_later_epoch": fe_speedup,
        "hone_partial_every_step_over_partial": partial_speedup,
    }


def table(result) -> str:
    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    lines = [
        "| strategy | epochs | lr | side | test accuracy | macro-F1 | train wall s "
        "| epoch 1 s | epochs 2+ mean s | predict s | hone/PyTorch time: total "
        "| epoch 1 | epochs 2+ |",
        "|" + "---|" * 13,
    ]
    for name, row in result["strategies"].items():
        for side, label in (("hone", "hone"), ("pytorch", "PyTorch")):
            s = row[side]
            r = row["hone_over_pytorch_time"]
            ratios = ([f"**{f(r['total_s'], '.2f')}**", f(r["first_epoch_s"], ".2f"),
                       f(r["later_epoch_mean_s"], ".2f")] if side == "hone" else ["", "", ""])
            label_name = name
            if s["frozen_layers"] is not None:
                label_name = f"{name} (k={s['frozen_layers']})"
            lines.append(
                f"| {label_name if side == 'hone' else ''} | {s['epochs']} | "
                f"{s['learning_rate']:g} | {label} | {s['accuracy']:.3f} | "
                f"{s['macro_f1']:.3f} | {s['total_s']:.1f} | {s['first_epoch_s']:.2f} | "
                f"{f(s['later_epoch_mean_s'], '.3f')} | {s['predict_s']:.2f} | "
                + " | ".join(ratios) + " |")
    fe = result["full_over_feature_extraction_later_epoch"]
    if fe:
        lines.append("")
        lines.append("Epochs after the first, full / feature_extraction mean time: "
                     + ", ".join(f"{'hone' if k == 'hone' else 'PyTorch'} "
                                 f"**{f(v, ',.0f')}×**" for k, v in fe.items()))
    partial = result.get("hone_partial_every_step_over_partial")
    if partial:
        lines.append("")
        lines.append("hone's partial, frozen layers every step and random batches / frozen "
                     f"layers once and length-grouped batches: epochs after the first "
                     f"**{f(partial['later_epoch_mean_s'], '.2f')}×**, whole job "
                     f"{f(partial['total_s'], '.2f')}×")
    return "\n".join(lines)


# --- run: the whole comparison ---------------------------------------------------------

def busy_jiffies():
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def loadavg():
    return [float(v) for v in open("/proc/loadavg").read().split()[:3]]


def timed_child(name, cmd):
    """Runs cmd; the mean number of CPUs other processes kept busy meanwhile."""
    print(f"{Path(sys.argv[0]).stem}: {name}: {' '.join(map(str, cmd))}", file=sys.stderr,
          flush=True)
    hz = os.sysconf("SC_CLK_TCK")
    before = busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    subprocess.run(cmd, check=True)
    after = busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    own = sum(getattr(after[1], f) - getattr(before[1], f) for f in ("ru_utime", "ru_stime"))
    machine = (after[0] - before[0]) / hz
    return round(max(0.0, machine - own) / (after[2] - before[2]), 2)


def run_sides(plan, hone_bin, script, threads, model_dir, follow_hone=False):
    """Writes `plan`, runs hone's example on it and then `script train`, each timed with
    how busy the rest of the machine kept; returns both sides' results and the run's
    metadata. `follow_hone` hands the PyTorch side hone's result (`--follow`)."""
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_json(tmp / "plan.json", plan)
        common = ["--plan", tmp / "plan.json", "--threads", str(threads)]
        if model_dir:
            common += ["--model-dir", model_dir]
        follow = ["--follow", tmp / "hone.json"] if follow_hone else []
        others = {"hone": timed_child("hone", [hone_bin, *common, "--json", tmp / "hone.json"])}
        others["pytorch"] = timed_child("pytorch", [
            sys.executable, script, "train", *common, *follow, "--json", tmp / "pytorch.json"])
        hone = json.loads((tmp / "hone.json").read_text())
        pytorch = json.loads((tmp / "pytorch.json").read_text())
    meta = {
        **run_meta(load_before),
        # Mean number of CPUs that other processes kept busy while each side ran.
        "other_load_cpus": others,
    }
    return hone, pytorch, meta


def run_meta(load_before) -> dict:
    """What a benchmark's result says about its run: when, which commit and command
    (the BENCH_* variables its shell script sets), the machine, whether it was quiet,
    and the load average before (`load_before`) and now."""
    env = os.environ
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": env.get("BENCH_COMMIT"),
        "command": env.get("BENCH_COMMAND"),
        "cpu_model": env.get("BENCH_CPU") or None,
        "nproc": os.cpu_count(),
        "quiet_wait": env.get("BENCH_QUIET"),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def publish(result, hone, pytorch, out, table_text):
    """Writes the result with both raw sides to `out` and prints the table, warning when
    the machine was busy."""
    result["raw"] = {"hone": hone, "pytorch": pytorch}
    write_json(out, result)
    print(table_text)
    others = result["other_load_cpus"]
    print(f"\nloadavg before {result['loadavg_before']}, after {result['loadavg_after']}; "
          f"other load (CPUs) hone {others['hone']:.2f}, pytorch {others['pytorch']:.2f}")
    if max(others.values()) > 0.1 * (os.cpu_count() or 1):
        print(f"{Path(sys.argv[0]).stem}: warning: other processes kept the machine busy; "
              "the times are not trustworthy, rerun on a quiet machine", file=sys.stderr)


def run(args):
    plan = make_plan(args)
    hone, pytorch, meta = run_sides(plan, HONE_BIN, __file__, args.threads, args.model_dir)
    result = report(plan, hone, pytorch, meta)
    publish(result, hone, pytorch, args.out, table(result))
    fe = result["full_over_feature_extraction_later_epoch"].get("hone")
    if fe is not None and fe < 10:
        print(f"strategies: warning: hone's feature_extraction epochs are only {fe:.1f}× "
              "faster than full's", file=sys.stderr)


def cli(doc, *, add_plan_args, check_plan_args, make_plan, strategies, model_dir, out,
        train, report, table, run, add_train_args=lambda parser: None):
    """The four subcommands (plan, train, report, run) of a side-by-side benchmark
    script, `doc` its module docstring. `train(plan, args, only)` is the PyTorch side
    on the strategies in `only` (all when empty); `add_train_args` adds its own flags."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)

    p_plan = sub.add_parser("plan", help="write the data and configs both sides read")
    add_plan_args(p_plan)
    p_plan.add_argument("--out", type=Path, required=True)

    p_train = sub.add_parser("train", help="the PyTorch side")
    p_train.add_argument("--plan", type=Path, required=True)
    p_train.add_argument("--model-dir", type=Path, default=model_dir)
    p_train.add_argument("--threads", type=int, default=None,
                         help="torch.set_num_threads; default: torch's own choice")
    p_train.add_argument("--strategies", default="",
                         help="comma-separated subset of the plan's strategies")
    add_train_args(p_train)
    p_train.add_argument("--json", type=Path, required=True)

    p_report = sub.add_parser("report", help="score and compare two sides' results")
    p_report.add_argument("--plan", type=Path, required=True)
    p_report.add_argument("--hone", type=Path, required=True)
    p_report.add_argument("--pytorch", type=Path, required=True)
    p_report.add_argument("--out", type=Path)

    p_run = sub.add_parser("run", help="plan, both sides, report")
    add_plan_args(p_run)
    p_run.add_argument("--threads", type=int, default=2)
    p_run.add_argument("--model-dir", type=Path, default=model_dir)
    p_run.add_argument("--out", type=Path, default=out)

    args = parser.parse_args()
    if args.command in ("plan", "run"):
        check_plan_args(parser, args)
    if args.command == "plan":
        write_json(args.out, make_plan(args))
    elif args.command == "train":
        plan = json.loads(args.plan.read_text())
        only = {s for s in args.strategies.split(",") if s}
        unknown = only - set(strategies)
        if unknown:
            parser.error(f"unknown strategies {sorted(unknown)}; known: {strategies}")
        write_json(args.json, train(plan, args, only))
    elif args.command == "report":
        plan = json.loads(args.plan.read_text())
        result = report(plan, json.loads(args.hone.read_text()),
                        json.loads(args.pytorch.read_text()), {})
        if args.out:
            write_json(args.out, result)
        print(table(result))
    else:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        run(args)


if __name__ == "__main__":
    cli(__doc__, add_plan_args=add_plan_args, check_plan_args=check_plan_args,
        make_plan=make_plan, strategies=STRATEGIES,
        model_dir=ROOT / ".deps/models/all-MiniLM-L6-v2",
        out=ROOT / "bench/results/strategies.json",
        train=lambda plan, args, only: train_side(plan, args.model_dir, args.threads, only),
        report=report, table=table, run=run)
