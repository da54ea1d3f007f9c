#!/usr/bin/env python3
"""Python's process pools on the scenarios of benches/compare.rs.

`concurrent.futures.ProcessPoolExecutor` and `multiprocessing.Pool`, each used the way its
documentation shows, with the interpreter's default start method. benches/compare.rs runs this
script and parses what it prints on stdout: one JSON object,

    {"python": "3.11.7", "start_method": "fork",
     "counts": {scenario: tasks or iterations per sample},
     "results": {scenario: {"executor" | "pool": [seconds per operation, one per run]}}}

with the same scenario keys as the Rust side. Progress goes to stderr. Run it by hand with
`python3 benches/python_peers.py --runs 3 --quick`.
"""

import argparse
import json
import multiprocessing
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

WORKERS = 2
CPU_TASKS = 100
CPU_MICROS = 1000
PLOT_SIZES = (1, 10, 100, 1000)
# The completion-order scenarios, as in benches/compare.rs: tasks of random length (1 µs to 1 ms,
# SplitMix64 seeded with RANDOM_SEED), and how many of them make a stream whose first result is
# timed, and how many such streams make a sample.
RANDOM_TASKS = 1000
RANDOM_SEED = 16
FIRST_BATCH = 200
FIRST_STREAMS = 10
MASK = (1 << 64) - 1


def noop(x):
    """Returns its argument: a task that costs nothing but its trip."""
    return x


def echo(payload):
    """Returns its argument: bytes there and back."""
    return payload


def spin(micros):
    """Keeps a core busy for `micros` microseconds of wall-clock time."""
    deadline = time.perf_counter() + micros / 1e6
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n


def random_micros(count):
    """`count` task lengths in µs, uniform in 1..=1000: the SplitMix64 sequence of compare.rs."""
    state = RANDOM_SEED
    lengths = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z ^= z >> 31
        lengths.append(1 + z % 1000)
    return lengths


def first_result(streams, start):
    """Mean seconds from `start()` to the first item of the stream it returns, over `streams`
    streams; the rest of each is drained off the clock."""
    total = 0.0
    for _ in range(streams):
        begin = time.perf_counter()
        stream = start()
        next(stream)
        total += time.perf_counter() - begin
        for _ in stream:
            pass
    return total / streams


def per_op(operations, run):
    """Seconds per operation of `run()`, which performs `operations` of them."""
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / operations


def plot_count(micros, base, seconds):
    """Tasks per plot sample: about `seconds` of work for two ideal workers, `base` at most."""
    return max(40, min(base, round(seconds * WORKERS * 1e6 / micros)))


class Report:
    """Collects samples by scenario and peer, running the peers of a scenario in turn."""

    def __init__(self, runs):
        self.runs = runs
        self.results = {}
        self.counts = {}

    def measure(self, scenario, count, variants):
        """Warms each variant up once, then takes `runs` samples of each, interleaved."""
        print(f"python: {scenario}", file=sys.stderr, flush=True)
        self.counts[scenario] = count
        for run in variants.values():
            run()
        samples = {peer: [] for peer in variants}
        peers = list(variants)
        for index in range(self.runs):
            # Rotate the order so that no peer always runs right after another.
            shift = index % len(peers)
            for peer in peers[shift:] + peers[:shift]:
                samples[peer].append(variants[peer]())
        self.results[scenario] = samples


def round_trip_and_bulk(report, executor, pool, quick):
    n = 200 if quick else 1000
    report.measure("round_trip", n, {
        "executor": lambda: per_op(n, lambda: [executor.submit(noop, i).result() for i in range(n)]),
        "pool": lambda: per_op(n, lambda: [pool.apply(noop, (i,)) for i in range(n)]),
    })

    n = 1000 if quick else 5000

    def executor_submit():
        futures = [executor.submit(noop, i) for i in range(n)]
        return [future.result() for future in futures]

    def pool_submit():
        pending = [pool.apply_async(noop, (i,)) for i in range(n)]
        return [result.get() for result in pending]

    report.measure("bulk_submit", n, {
        "executor": lambda: per_op(n, executor_submit),
        "pool": lambda: per_op(n, pool_submit),
    })
    report.measure("bulk_map", n, {
        "executor": lambda: per_op(n, lambda: list(executor.map(noop, range(n), chunksize=1))),
        "pool": lambda: per_op(n, lambda: pool.map(noop, range(n), chunksize=1)),
    })
    n = 10_000 if quick else 100_000
    report.measure("bulk_map_chunk100", n, {
        "executor": lambda: per_op(n, lambda: list(executor.map(noop, range(n), chunksize=100))),
        "pool": lambda: per_op(n, lambda: pool.map(noop, range(n), chunksize=100)),
    })


def completion_order(report, executor, pool, quick):
    n = RANDOM_TASKS // 10 if quick else RANDOM_TASKS
    lengths = random_micros(RANDOM_TASKS)[:n]

    def submitted(tasks):
        return as_completed([executor.submit(spin, micros) for micros in tasks])

    report.measure("random_map", n, {
        "executor": lambda: per_op(n, lambda: list(executor.map(spin, lengths))),
        "pool": lambda: per_op(n, lambda: list(pool.imap(spin, lengths))),
    })
    report.measure("random_unordered", n, {
        "executor": lambda: per_op(n, lambda: [f.result() for f in submitted(lengths)]),
        "pool": lambda: per_op(n, lambda: list(pool.imap_unordered(spin, lengths))),
    })
    streams = max(2, FIRST_STREAMS // 10) if quick else FIRST_STREAMS
    batch = random_micros(FIRST_BATCH)
    report.measure("random_first_map", streams, {
        "executor": lambda: first_result(streams, lambda: iter(executor.map(spin, batch))),
        "pool": lambda: first_result(streams, lambda: pool.imap(spin, batch)),
    })
    report.measure("random_first_unordered", streams, {
        "executor": lambda: first_result(
            streams, lambda: (f.result() for f in submitted(batch))),
        "pool": lambda: first_result(streams, lambda: pool.imap_unordered(spin, batch)),
    })


def cpu_bound(report):
    for workers in (1, WORKERS):
        with ProcessPoolExecutor(max_workers=workers) as executor, \
                multiprocessing.Pool(workers) as pool:
            tasks = [CPU_MICROS] * CPU_TASKS
            report.measure(f"cpu_{workers}", CPU_TASKS, {
                "executor": lambda: per_op(1, lambda: list(executor.map(spin, tasks))),
                "pool": lambda: per_op(1, lambda: pool.map(spin, tasks, chunksize=1)),
            })


def byte_round_trips(report, quick):
    with ProcessPoolExecutor(max_workers=1) as executor, multiprocessing.Pool(1) as pool:
        for key, size, iterations in (("bytes_1k", 1 << 10, 200), ("bytes_1m", 1 << 20, 20),
                                      ("bytes_16m", 16 << 20, 5)):
            if quick:
                iterations = max(2, iterations // 5)
            payload = bytes([0xA5]) * size

            def executor_echo(payload=payload, iterations=iterations):
                return per_op(iterations, lambda: [executor.submit(echo, payload).result()
                                                   for _ in range(iterations)])

            def pool_echo(payload=payload, iterations=iterations):
                return per_op(iterations, lambda: [pool.apply(echo, (payload,))
                                                   for _ in range(iterations)])

            report.measure(key, iterations, {"executor": executor_echo, "pool": pool_echo})


def cold_start(report, quick):
    iterations = 2 if quick else 5

    def executor_cold():
        total = 0.0
        for _ in range(iterations):
            start = time.perf_counter()
            executor = ProcessPoolExecutor(max_workers=1)
            executor.submit(noop, 1).result()
            total += time.perf_counter() - start
            executor.shutdown()
        return total / iterations

    def pool_cold():
        total = 0.0
        for _ in range(iterations):
            start = time.perf_counter()
            pool = multiprocessing.Pool(1)
            pool.apply(noop, (1,))
            total += time.perf_counter() - start
            pool.close()
            pool.join()
        return total / iterations

    report.measure("cold_start", iterations, {"executor": executor_cold, "pool": pool_cold})


def throughput_plot(report, executor, quick):
    seconds = 0.05 if quick else 0.25
    for micros in PLOT_SIZES:
        n = plot_count(micros, 400 if quick else 2000, seconds)

        def executor_submit(n=n, micros=micros):
            def run():
                futures = [executor.submit(spin, micros) for _ in range(n)]
                return [future.result() for future in futures]
            return per_op(n, run)

        report.measure(f"plot_{micros}", n, {"executor": executor_submit})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="samples per figure")
    parser.add_argument("--quick", action="store_true", help="fewer tasks per sample")
    args = parser.parse_args()

    report = Report(args.runs)
    with ProcessPoolExecutor(max_workers=WORKERS) as executor, \
            multiprocessing.Pool(WORKERS) as pool:
        round_trip_and_bulk(report, executor, pool, args.quick)
        completion_order(report, executor, pool, args.quick)
        throughput_plot(report, executor, args.quick)
    cpu_bound(report)
    byte_round_trips(report, args.quick)
    cold_start(report, args.quick)

    json.dump({
        "python": platform.python_version(),
        "start_method": multiprocessing.get_start_method(),
        "counts": report.counts,
        "results": report.results,
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
