"""`fairlane bench ...`: the benchmarks in bench/ (docs/benchmarks.md)."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    from fairlane.bench import decisions, engine_floor, noisy_neighbor, overhead
    from fairlane.bench import load as load_bench
    from fairlane.bench import soak as soak_bench

    parser = argparse.ArgumentParser(
        prog="fairlane bench",
        description="Benchmarks; results go to bench/results/<name>.json (+ .png) and stdout.",
    )
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, module, text in (
        ("overhead", overhead, "latency, throughput and CPU added by Envoy and Fairlane"),
        ("decisions", decisions, "decisions/s and CPU per decision of the worker alone"),
        ("noisy-neighbor", noisy_neighbor, "quiet tenants' TTFT next to a flooding tenant"),
        ("engine-floor", engine_floor, "the quiet TTFT the engine alone allows under a flooder"),
        ("load", load_bench, "throughput, TTFT and errors at rising concurrency"),
        ("soak", soak_bench, "memory, fds, threads and lost requests over a long run"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def run_bench(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))
