"""The validation curves of `auto`'s trials, epoch by epoch: what decides when a trial
that is behind may stop (BENCHMARKS.md, "Transfer quality: trials that fall behind
stop at half their epochs").

A trial is a quiet run whose epochs the job does not record, so each one is run here
as the fixed job it is: for every row (a dataset of bench/quality.py at a size a class,
its training set drawn as that script draws it), the head alone (the floor) and each
candidate auto tries on that model (text: `partial` with 3 of 6 layers frozen and
`full`; images: `partial` with 12 and 8 of 17 blocks frozen and `full`), seed 0, with
`epochs` set to the trial's (half the epochs sized for the data). It prints and writes
each run's validation macro-F1 after every epoch, the epoch kept and the held-out
accuracy through predict.

    .venv/bin/python bench/trial_curves.py [--hone target/release/hone] [--port 18790]
        [--out bench/results/trial-curves.json]
        [--rows rotten_tomatoes:64:7,debates_party:64:5,convention_party:64:7,digits:64:2,fashion_mnist:64:2]

A row is DATASET:PER_CLASS:TRIAL_EPOCHS; the trial epochs are what `auto` gives that
row (its events say "auto tried ... for N epochs").
"""

import argparse
import json
import time
from pathlib import Path

import quality as q

ROWS = "rotten_tomatoes:64:7,debates_party:64:5,convention_party:64:7,digits:64:2,fashion_mnist:64:2"


def run(hone, base, file_id, method, frozen, epochs):
    m = {"type": method} | ({"frozen_layers": frozen} if frozen is not None else {})
    body = {"base_model": base, "training_file": file_id, "method": m, "seed": 0}
    if method != "feature_extraction":
        body["hyperparameters"] = {"epochs": epochs}
    started = time.monotonic()
    job = hone.request("POST", "/v1/fine_tuning/jobs", body)
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        job = hone.request("GET", f"/v1/fine_tuning/jobs/{job['id']}")
    if job["status"] != "succeeded":
        raise SystemExit(f"{method}: {job['status']}: {job.get('error')}")
    return job, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hone", default=str(q.ROOT / "target" / "release" / "hone"))
    parser.add_argument("--port", type=int, default=18790)
    parser.add_argument("--out", default=str(q.ROOT / "bench" / "results" / "trial-curves.json"))
    parser.add_argument("--rows", default=ROWS)
    args = parser.parse_args()
    q.PORT = args.port
    hone = q.Hone(args.hone)
    results = []
    try:
        for spec in args.rows.split(","):
            name, per_class, epochs = spec.split(":")
            per_class, epochs = int(per_class), int(epochs)
            kind, base, train, test = q.draw(name, per_class)
            file_id = hone.upload(kind, train)
            candidates = [("feature_extraction", None)] + (
                [("partial", 3), ("full", None)] if kind == "text"
                else [("partial", 12), ("partial", 8), ("full", None)])
            for method, frozen in candidates:
                job, wall = run(hone, base, file_id, method, frozen, epochs)
                metrics = hone.request("GET", f"/v1/fine_tuning/jobs/{job['id']}/metrics")
                curve = [round(e["validation"]["macro_f1"], 3) for e in metrics["epochs"]
                         if e.get("validation")]
                predicted = hone.predict(job["fine_tuned_model"], kind, test)
                accuracy = q.scores([y for _, y in test], predicted)["accuracy"]
                result = {"row": spec, "method": method, "frozen_layers": frozen,
                          "epochs": job["hyperparameters"]["epochs"], "wall_s": round(wall, 1),
                          "validation_macro_f1_by_epoch": curve,
                          "validation_examples": (job["result"].get("validation") or {}).get("examples"),
                          "best_epoch": metrics.get("best_epoch"), "test_accuracy": round(accuracy, 3)}
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        hone.close()
    Path(args.out).write_text(json.dumps({"command": "bench/trial_curves.py", "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
