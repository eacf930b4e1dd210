"""What one training step asks of the CUDA driver and libraries, from a dry run's call counts.

`.ci/cuda-dryrun.sh` runs `xtask gpu-check` against `fake_cuda.c`, which appends every count so
far at each device synchronisation (`calls.jsonl`). Of the intervals between synchronisations
that launch kernels, each configuration of `gpu-check` makes, in order: its warm-up steps, its
timed steps, the loss read back, and three forwards and three backwards timed apart; the next
configuration starts seven intervals after its timed block, whose counts divided by the report's
`steps` are the counts per step. The timed block is the one of the first three where the
one-launch SGD update (`dmlp_sgd_many_f32`, once a step after the first) ran `steps` times, or,
where it does not run (the generic path), the one with the most launches (so give more timed
steps than warm-up steps).

    python3 xtask/cuda-dryrun/summarize.py calls.jsonl gpu-check.json [--json summary.json]
        [--budget xtask/cuda-dryrun/budget.json]

With `--budget`, a configuration that asks for more of anything than its line of the budget
allows fails the run (CI's guard against launches or allocations creeping back).
"""

import argparse
import json
import sys

MARKER = "kernel dmlp_sgd_many_f32"
CONVOLUTIONS = ("cudnnConvolutionForward", "cudnnConvolutionBackwardData", "cudnnConvolutionBackwardFilter")
BATCH_NORMS = ("cudnnBatchNormalizationForwardTraining", "cudnnBatchNormalizationBackward")
GEMMS = ("cublasGemmStridedBatchedEx", "cublasDgemmStridedBatched")


def intervals(snapshots):
    """The counts between consecutive synchronisations."""
    previous = {}
    for snapshot in snapshots:
        counts = snapshot["counts"]
        yield {name: count - previous.get(name, 0) for name, count in counts.items() if count != previous.get(name, 0)}
        previous = counts


def per_step(counts, steps):
    kernels = {name[len("kernel "):]: n / steps for name, n in counts.items() if name.startswith("kernel ")}
    calls = lambda names: sum(counts.get(name, 0) for name in names) / steps
    descriptors = sum(n for name, n in counts.items() if name.startswith("cudnn") and "Descriptor" in name)
    return {
        "kernel_launches": sum(kernels.values()),
        "cudnn_convolutions": calls(CONVOLUTIONS),
        "cudnn_batch_norms": calls(BATCH_NORMS),
        "cublas_gemms": calls(GEMMS),
        "allocations": calls(("cuMemAllocAsync", "cuMemAlloc_v2")),
        "frees": calls(("cuMemFreeAsync", "cuMemFree_v2")),
        "copies_host_to_device": calls(("cuMemcpyHtoDAsync_v2",)),
        "copies_device_to_host": calls(("cuMemcpyDtoHAsync_v2",)),
        "copies_device_to_device": calls(("cuMemcpyDtoDAsync_v2",)),
        "memsets": calls(("cuMemsetD8Async",)),
        "cudnn_descriptor_calls": descriptors / steps,
        "kernel_lookups": calls(("cuModuleGetFunction",)),
        "kernels": dict(sorted(kernels.items(), key=lambda item: -item[1])),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calls")
    parser.add_argument("report")
    parser.add_argument("--json", help="write the per-step counts here too")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per configuration")
    parser.add_argument("--budget", help="the most each configuration may ask for per step (JSON)")
    args = parser.parse_args()
    snapshots = [json.loads(line) for line in open(args.calls)]
    report = json.load(open(args.report))
    blocks = [counts for counts in intervals(snapshots) if any(n.startswith("kernel ") for n in counts)]
    configurations = [s for s in report["steps"] if s.get("steps")]
    summary = []
    launches = lambda counts: sum(n for name, n in counts.items() if name.startswith("kernel "))
    for step in configurations:
        label = f"{step['model']} {step['precision']}"
        if not blocks:
            sys.exit(f"no timed block left for {label}")
        first = range(min(3, len(blocks)))
        marked = [i for i in first if blocks[i].get(MARKER, 0) == step["steps"]]
        index = marked[0] if marked else max(first, key=lambda i: launches(blocks[i]))
        timed = blocks[index]
        if 0 < timed.get(MARKER, 0) != step["steps"]:
            sys.exit(f"{label}: the block taken for {step['steps']} timed steps has {timed[MARKER]} SGD updates")
        counts = per_step(timed, step["steps"])
        del blocks[: index + 8]
        counts.update(configuration=label, host_ms_per_step=1000 * step["host_s"] if step.get("host_s") else None)
        summary.append(counts)
    header = ("launches", "cuDNN conv", "cuDNN BN", "cuBLAS", "allocs", "frees", "H→D", "D→H", "D→D", "memset",
              "cuDNN desc", "host ms")
    keys = ("kernel_launches", "cudnn_convolutions", "cudnn_batch_norms", "cublas_gemms", "allocations", "frees",
            "copies_host_to_device", "copies_device_to_host", "copies_device_to_device", "memsets",
            "cudnn_descriptor_calls", "host_ms_per_step")
    print("per training step (dry run: no kernel runs, every driver call free):")
    print(f"| configuration | {' | '.join(header)} |")
    print(f"| --- |{' ---: |' * len(header)}")
    for counts in summary:
        cells = ["–" if counts[k] is None else f"{counts[k]:.1f}" if k == "host_ms_per_step" else f"{counts[k]:g}"
                 for k in keys]
        print(f"| {counts['configuration']} | {' | '.join(cells)} |")
    for counts in summary:
        top = list(counts["kernels"].items())[: args.top]
        print(f"{counts['configuration']}: " + ", ".join(f"{name} {n:g}" for name, n in top))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=1)
    if args.budget:
        over = over_budget(summary, json.load(open(args.budget)))
        for line in over:
            print(f"over the budget: {line}", file=sys.stderr)
        if over:
            sys.exit(f"{len(over)} count(s) over {args.budget}: see its first line for what to do")
        print(f"within the budget ({args.budget})")


def over_budget(summary, budget):
    """Every count of `summary` above its configuration's line of `budget` (a configuration the
    budget does not name, or one the run lacks, is an error too: the two must be kept together)."""
    found = {counts["configuration"]: counts for counts in summary}
    named = {name for name in budget if not name.startswith("_")}
    over = [f"{name}: not in the budget" for name in found if name not in named]
    over += [f"{name}: not in the run" for name in named if name not in found]
    for name in named & found.keys():
        for key, most in budget[name].items():
            if found[name][key] > most:
                over.append(f"{name}: {found[name][key]:g} {key} per step, at most {most}")
    return over


if __name__ == "__main__":
    main()
