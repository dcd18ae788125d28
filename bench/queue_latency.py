"""Queue latency: how long a job waits between its submission and a worker taking it.
bench/run-queue builds what is missing, runs crates/hone-store/examples/claims.rs
(claims per second with many queued jobs) and then this; see BENCHMARKS.md ("Queue
latency").

  1. hone (`hone all`, default config — one worker slot, a 2 s poll interval — on its
     own new database and data directory, port 0) gets a small text file through
     its REST API.
  2. --jobs times, one after the other: create a job (all-MiniLM-L6-v2, full
     fine-tuning long enough not to finish on its own), wait until it is `running`,
     cancel it, wait until it is `cancelled`, then leave the worker idle for a random
     0.2-1.0 s (so that it waits on its wake-up, and a claim by the 2 s poll would
     show as such) before the next.
  3. Submit to running, per job, from the server's own clock: `attempted_at -
     created_at` in Postgres (both are `now()`, the start of the creating and of the
     claiming transaction), and as this client saw it (POST sent to the first GET
     that answered `running`, polled every --poll-ms).

Only the standard library; the server is a separate process, stopped when it exits.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from serve import Server, expect, multipart, request

ROOT = Path(__file__).resolve().parents[1]


def log(message):
    print(f"queue: {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def percentiles(values: list[float]) -> dict:
    """Nearest-rank p50/p90/p99, max and mean (as the claims example reports)."""
    ordered = sorted(values)

    def at(q):
        rank = min(max(int(-(-len(ordered) * q // 1)), 1), len(ordered))
        return ordered[rank - 1]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1],
            "mean": sum(ordered) / len(ordered)}


def psql(database: str, sql: str) -> list[list[str]]:
    done = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database,
                           "-AtF", "\t", "-c", sql],
                          capture_output=True, text=True, check=True)
    return [line.split("\t") for line in done.stdout.splitlines() if line]


def wait_status(base, key, job_id, wanted: set, poll: float, timeout: float) -> tuple:
    """(status, monotonic time of the answer) of the first GET whose status is in
    `wanted`; exits when the job ends otherwise or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = expect(request("GET", f"{base}/v1/fine_tuning/jobs/{job_id}", key), "poll")
        now = time.monotonic()
        if job["status"] in wanted:
            return job["status"], now
        if job["status"] in ("succeeded", "failed", "cancelled"):
            sys.exit(f"queue: job {job_id} is {job['status']}, waiting for {wanted}: "
                     f"{json.dumps(job.get('error'))}")
        time.sleep(poll)
    sys.exit(f"queue: job {job_id} not {wanted} within {timeout:.0f} s")


def run(args):
    load_before = load_average()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HONE_")}
    env.update({"HONE_DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
                "HONE_LISTEN": "127.0.0.1:0",
                "HONE_DATA_DIR": str(args.work_dir / "data"),
                "RUST_LOG": "warn"})
    server = Server("hone", [str(args.hone_bin), "all"], env, args.work_dir / "hone.log",
                    args.work_dir / "pids")
    try:
        key = server.wait_for("export HONE_API_KEY=", 300)
        server.base = server.wait_for("hone listening on", 300)
        result = measure(args, server.base, key)
    finally:
        server.stop()
    result["load_average"] = {"before": load_before, "after": load_average()}
    result["commit"] = os.environ.get("BENCH_COMMIT", "unknown")
    result["command"] = os.environ.get("BENCH_COMMAND", "bench/queue_latency.py run")
    result["quiet"] = os.environ.get("BENCH_QUIET", "not checked")
    result["cpu"] = os.environ.get("BENCH_CPU", "")
    result["cpus"] = os.cpu_count()
    if args.claims:
        result["claims"] = [json.loads(Path(p).read_text()) for p in args.claims]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    log(f"wrote {args.out}")


def measure(args, base, key) -> dict:
    rows = [{"text": f"short example number {i} {'good' if i % 2 else 'bad'}",
             "label": "pos" if i % 2 else "neg"} for i in range(64)]
    body, content_type = multipart(
        {"purpose": "fine-tune"}, "queue.jsonl",
        "".join(json.dumps(r) + "\n" for r in rows).encode())
    file = expect(request("POST", f"{base}/v1/files", key, body, content_type), "upload")
    job_body = {"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                "method": {"type": "full"},
                "hyperparameters": {"epochs": 50, "batch_size": 8, "max_seq_len": 16}}
    poll = args.poll_ms / 1000
    jobs, client_ms = [], []
    for i in range(args.jobs):
        time.sleep(random.uniform(0.2, 1.0))
        sent = time.monotonic()
        job = expect(request("POST", f"{base}/v1/fine_tuning/jobs", key, job_body),
                     "create job")
        _, seen = wait_status(base, key, job["id"], {"running"}, poll, 60)
        client_ms.append((seen - sent) * 1000)
        expect(request("POST", f"{base}/v1/fine_tuning/jobs/{job['id']}/cancel", key, {}),
               "cancel")
        wait_status(base, key, job["id"], {"cancelled"}, 0.05, 120)
        jobs.append(job["id"])
        if (i + 1) % 10 == 0:
            log(f"{i + 1}/{args.jobs} jobs")
    ids = ",".join(f"'{j}'" for j in jobs)
    rows = psql(args.database, f"""
        SELECT id, attempt, extract(epoch FROM attempted_at - created_at) * 1000,
               extract(epoch FROM started_at - created_at) * 1000
        FROM fine_tuning_jobs WHERE id IN ({ids})""")
    if len(rows) != len(jobs) or any(r[1] != "1" for r in rows):
        sys.exit(f"queue: expected {len(jobs)} jobs each claimed once, got {rows}")
    server_ms = [float(r[2]) for r in rows]
    started_ms = [float(r[3]) for r in rows]
    return {"jobs": len(jobs), "poll_ms": args.poll_ms,
            "submit_to_running_ms": {
                "server_attempted_at": percentiles(server_ms),
                "server_started_at": percentiles(started_ms),
                "client": percentiles(client_ms),
                "over_poll_interval": sum(1 for m in server_ms if m >= 1000)}}


def table(result) -> str:
    lines = ["| figure | p50 | p90 | p99 | max |", "|---|---|---|---|---|"]
    s = result["submit_to_running_ms"]
    for name, title in (("server_attempted_at", "submit → running, server clock"),
                        ("client", "submit → running, client's view")):
        p = s[name]
        lines.append(f"| {title} (ms, {result['jobs']} jobs) | {p['p50']:.1f} | "
                     f"{p['p90']:.1f} | {p['p99']:.1f} | {p['max']:.1f} |")
    for claims in result.get("claims", []):
        index = "with" if claims["claim_index"] else "without"
        for r in claims["runs"]:
            c = r["claim_ms"]
            lines.append(f"| {r['tasks']} claimer(s), {r['jobs']} queued, {index} "
                         f"claim index: {r['claims_per_second']:.0f} claims/s; claim ms | "
                         f"{c['p50']:.2f} | {c['p90']:.2f} | {c['p99']:.2f} | "
                         f"{c['max']:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="submit → running, and the claims results")
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--poll-ms", type=int, default=5,
                   help="the client's GET interval while it waits for `running`")
    p.add_argument("--hone-bin", type=Path, default=ROOT / "target/release/hone")
    p.add_argument("--database", required=True, help="a Postgres database name to create")
    p.add_argument("--work-dir", type=Path, required=True, help="data directory and log")
    p.add_argument("--claims", type=Path, action="append", default=[],
                   help="a JSON file from examples/claims to include (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/queue.json")
    args = parser.parse_args()
    if args.jobs < 1 or args.poll_ms < 1:
        parser.error("--jobs and --poll-ms must be >= 1")
    run(args)


if __name__ == "__main__":
    main()
