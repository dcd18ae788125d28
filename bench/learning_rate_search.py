"""`"learning_rate": "auto"` on text, through the API: for each row (a dataset of
bench/quality.py at a size a class, drawn as that script draws it), one `full` job with
seed 0 and `"learning_rate": "auto"` on a fresh `hone all`; prints and writes each rate
tried (its epochs, validation macro-F1, seconds, and why it stopped early if it did),
the rate kept, the job's time from submit to `succeeded` and its held-out accuracy
through predict.

    .venv/bin/python bench/learning_rate_search.py [--hone target/release/hone]
        [--rows rotten_tomatoes:64,convention_party:64] [--port 18792]
        [--out bench/results/learning-rate-search.json]
"""

import argparse
import json
import time
from pathlib import Path

import quality as q


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hone", default=str(q.ROOT / "target" / "release" / "hone"))
    parser.add_argument("--rows", default="rotten_tomatoes:64,convention_party:64")
    parser.add_argument("--port", type=int, default=18792)
    parser.add_argument("--out", default=str(q.ROOT / "bench" / "results" / "learning-rate-search.json"))
    args = parser.parse_args()
    q.PORT = args.port
    hone = q.Hone(args.hone)
    results = []
    try:
        for spec in args.rows.split(","):
            name, per_class = spec.split(":")
            per_class = int(per_class)
            kind, base, train, test = q.draw(name, per_class)
            file_id = hone.upload(kind, train)
            started = time.monotonic()
            job = hone.request("POST", "/v1/fine_tuning/jobs", {
                "base_model": base, "training_file": file_id, "method": {"type": "full"},
                "hyperparameters": {"learning_rate": "auto"}, "seed": 0})
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.5)
                job = hone.request("GET", f"/v1/fine_tuning/jobs/{job['id']}")
            wall = time.monotonic() - started
            if job["status"] != "succeeded":
                raise SystemExit(f"{spec}: {job['status']}: {job.get('error')}")
            predicted = hone.predict(job["fine_tuned_model"], kind, test)
            search = job["result"].get("learning_rate_search") or {}
            result = {"row": spec, "epochs": job["hyperparameters"]["epochs"],
                      "chosen": search.get("chosen"), "trials": search.get("trials"),
                      "search_seconds": round(sum(t["seconds"] for t in search.get("trials", [])), 1),
                      "wall_s": round(wall, 1),
                      "test_accuracy": round(q.scores([y for _, y in test], predicted)["accuracy"], 3)}
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        hone.close()
    Path(args.out).write_text(json.dumps({"command": "bench/learning_rate_search.py "
                                          + f"--rows {args.rows}", "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
