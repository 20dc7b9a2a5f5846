# The seed's claims in its own language: each structure the seed chose, in
# CPython, against the naive one, on the same workloads `vivachat bench`
# measures in Rust. Run by `vivachat bench --python`; prints one JSON object.
# Arguments: sizes (comma-separated), ops per measurement, repetitions.
#
# Every repetition builds its structures and its probes afresh, outside the
# timing, so that (as in the Rust rows) the N printed is the N measured, and
# each probe is a new string equal to a key but not the same object: CPython
# then cannot answer by identity, nor reuse a hash cached on the probe.
import json
import platform
import sys
import time
from collections import deque

sizes = [int(n) for n in sys.argv[1].split(",")]
OPS = int(sys.argv[2])
REPS = int(sys.argv[3])


def timed(make, ops):
    """Median nanoseconds per operation over REPS repetitions of `ops` calls,
    each on what a fresh `make()` built (not timed)."""
    samples = []
    for _ in range(REPS):
        op = make()
        start = time.perf_counter_ns()
        op(ops)
        samples.append((time.perf_counter_ns() - start) / ops)
    samples.sort()
    return samples[len(samples) // 2]


def name(i):
    return "user%07d" % i


def keys(n):
    return [name(i) for i in range(n)]


def probes(n, ops, seed):
    # New string objects, equal to keys: built per repetition, each used once.
    return [name((i * seed) % n) for i in range(ops)]


def queue(n, ops):
    # Each pop is made at length n: the popped message rejoins at the back,
    # as a new one would arrive (the same operation at every n).
    def popleft():
        d = deque(range(n))

        def op(ops):
            for _ in range(ops):
                d.append(d.popleft())
        return op

    def pop0():
        lst = list(range(n))

        def op(ops):
            for _ in range(ops):
                lst.append(lst.pop(0))
        return op

    return [("deque.popleft()", popleft), ("list.pop(0)", pop0)]


def lookups(n, ops, build, seed):
    def make():
        container, queries = build(keys(n)), probes(n, ops, seed)

        def op(ops):
            for q in queries:
                q in container
        return op
    return make


def presence(n, ops):
    return [
        ("x in set", lookups(n, ops, set, 7919)),
        ("x in list", lookups(n, ops, list, 7919)),
        ("x in dict", lookups(n, ops, lambda ks: {k: [] for k in ks}, 7919)),
    ]


def connections(n, ops):
    def get():
        as_dict, queries = {k: ["socket"] for k in keys(n)}, probes(n, ops, 7877)

        def op(ops):
            for q in queries:
                as_dict[q]
        return op

    def scan():
        as_list, queries = [(k, ["socket"]) for k in keys(n)], probes(n, ops, 7877)

        def op(ops):
            for q in queries:
                for k, v in as_list:
                    if k == q:
                        break
        return op

    return [("dict[user]", get), ("scan of [(user, sockets)]", scan)]


def group_join(n, ops):
    # Joins stop at n/2 (as in the Rust rows), so the group stays between n
    # and 1.5n members, and every join is of a new member.
    def newcomers():
        return ["new%07d" % i for i in range(ops)]

    def add():
        members, batch = set(keys(n)), newcomers()

        def op(ops):
            for x in batch:
                members.add(x)
        return op

    def append_if_absent():
        members, batch = keys(n), newcomers()

        def op(ops):
            for x in batch:
                if x not in members:
                    members.append(x)
        return op

    return [("set.add", add), ("list append if absent", append_if_absent)]


WORKLOADS = [
    ("queue_drain", queue),
    ("presence", presence),
    ("connection_lookup", connections),
    ("group_join", group_join),
]


def ops_for(workload, variant, n):
    # A scan of n costs n per op: fewer ops keep big n quick.
    ops = OPS
    if "scan" in variant or "list" in variant:
        ops = max(1, min(OPS, 2_000_000 // max(n, 1)))
    if workload == "group_join":
        ops = max(1, min(ops, n // 2))
    return ops


results = []
for workload, variants in WORKLOADS:
    for n in sizes:
        for variant, _ in variants(n, 1):
            ops = ops_for(workload, variant, n)
            make = dict(variants(n, ops))[variant]
            results.append({"workload": workload, "variant": variant, "n": n, "ns_median": timed(make, ops)})

print(json.dumps({"python": platform.python_version(), "results": results}))
