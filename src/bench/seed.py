# The seed's claims in its own language: each structure the seed chose, in
# CPython, against the naive one, on the same workloads `vivachat bench`
# measures in Rust. Run by `vivachat bench --python`; prints one JSON object.
# Arguments: sizes (comma-separated), ops per measurement, repetitions.
import json
import platform
import sys
import time
from collections import deque

sizes = [int(n) for n in sys.argv[1].split(",")]
OPS = int(sys.argv[2])
REPS = int(sys.argv[3])


def timed(op, ops):
    """Median nanoseconds per operation over REPS repetitions of `ops` calls."""
    samples = []
    for _ in range(REPS):
        start = time.perf_counter_ns()
        op(ops)
        samples.append((time.perf_counter_ns() - start) / ops)
    samples.sort()
    return samples[len(samples) // 2]


def queue(n):
    # Each pop is made at length n: the popped message rejoins at the back,
    # as a new one would arrive (the same operation at every n).
    d = deque(range(n))
    lst = list(range(n))

    def popleft(ops):
        for _ in range(ops):
            d.append(d.popleft())

    def pop0(ops):
        for _ in range(ops):
            lst.append(lst.pop(0))

    return [("deque.popleft()", popleft), ("list.pop(0)", pop0)]


def keys(n):
    return ["user%d" % i for i in range(n)]


def presence(n):
    names = keys(n)
    as_set, as_dict, as_list = set(names), {k: [] for k in names}, list(names)
    probes = [names[(i * 7919) % n] for i in range(OPS)]

    def run(container):
        def op(ops):
            for i in range(ops):
                probes[i % len(probes)] in container
        return op

    return [("x in set", run(as_set)), ("x in list", run(as_list)), ("x in dict", run(as_dict))]


def connections(n):
    names = keys(n)
    as_dict = {k: ["socket"] for k in names}
    as_list = [(k, ["socket"]) for k in names]
    probes = [names[(i * 7919) % n] for i in range(OPS)]

    def get(ops):
        for i in range(ops):
            as_dict[probes[i % len(probes)]]

    def scan(ops):
        for i in range(ops):
            p = probes[i % len(probes)]
            for k, v in as_list:
                if k == p:
                    break

    return [("dict[user]", get), ("scan of [(user, sockets)]", scan)]


def group_join(n):
    names = keys(n)
    members_set, members_list = set(names), list(names)
    newcomers = ["new%d" % i for i in range(OPS)]

    def add(ops):
        for i in range(ops):
            members_set.add(newcomers[i % len(newcomers)])

    def append_if_absent(ops):
        for i in range(ops):
            x = newcomers[i % len(newcomers)]
            if x not in members_list:
                members_list.append(x)

    return [("set.add", add), ("list append if absent", append_if_absent)]


WORKLOADS = [
    ("queue_drain", queue),
    ("presence", presence),
    ("connection_lookup", connections),
    ("group_join", group_join),
]

results = []
for workload, make in WORKLOADS:
    for n in sizes:
        for name, op in make(n):
            # A scan of n costs n per op: fewer ops keep big n quick.
            ops = max(1, min(OPS, 2_000_000 // max(n, 1))) if "scan" in name or "list" in name else OPS
            results.append({"workload": workload, "variant": name, "n": n, "ns_median": timed(op, ops)})

print(json.dumps({"python": platform.python_version(), "results": results}))
