#!/usr/bin/env python3
"""How much does a tuned linear probe's test accuracy depend on its folds, and which
score should pick its C: held-out accuracy (scikit-learn's default) or held-out
log-loss? Measured with scikit-learn alone, on the frozen features of
bench/quality.py's datasets and splits: LogisticRegressionCV (10 values of C,
5-fold stratified CV on every training row, the final fit on all of them, as
bench/quality.py's "PyTorch probe" and hone's fitted probe with its final fit),
once per fold seed, for both scores.

Prints, per row and score, the mean test accuracy over the fold seeds and its range.

  .venv/bin/python bench/probe_criterion.py [--only rotten_tomatoes,...] [--sizes 16,64]
      [--seeds 10]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(quality.DATASETS))
    parser.add_argument("--sizes", default="16,64")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    models = {}

    def test_accuracy(x, y, tx, ty, scoring, seed):
        return float(np.mean(np.asarray(quality.probe(x, y, tx, scoring, seed)) == ty))

    print("| dataset | per class | by accuracy: mean (min–max) | by log-loss: mean (min–max) |")
    print("|---|---|---|---|")
    for name in args.only.split(","):
        kind, pool, test = quality.DATASETS[name]()
        trains, test = quality.split(kind, pool, test, sizes)
        model = models.setdefault(kind, (quality.TextModel if kind == "text" else quality.ImageModel)(torch))
        tx = model.features([a for a, _ in test])
        ty = np.array([b for _, b in test])
        for n in sizes:
            x = model.features([a for a, _ in trains[n]])
            y = np.array([b for _, b in trains[n]])
            cells = []
            for scoring in (None, "neg_log_loss"):
                accs = [test_accuracy(x, y, tx, ty, scoring, seed) for seed in range(args.seeds)]
                cells.append(f"{np.mean(accs):.3f} ({min(accs):.3f}–{max(accs):.3f})")
            print(f"| {name} | {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
