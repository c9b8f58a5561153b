"""The `fairlane` command."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
from pathlib import Path

from fairlane import __version__
from fairlane.policy import hash_key
from fairlane.policy_file import PolicyError, load_policy

DEFAULT_RUN_ROOT = Path(os.environ.get("FAIRLANE_RUN_DIR", "/tmp/fairlane"))


def default_run_dir(config: Path) -> Path:
    """One run directory per listener port, so two instances never share one."""
    try:
        port = load_policy(config).listener.port
    except PolicyError:
        port = 0
    return DEFAULT_RUN_ROOT / str(port)


def cmd_serve(args: argparse.Namespace) -> int:
    from fairlane.serve import serve

    return serve(args.config, args.run_dir or default_run_dir(args.config))


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        engines = ", ".join(f"{n} ({e.kind})" for n, e in policy.engines.items())
        print(f"{path}: ok — {len(policy.tenants)} tenants, engines: {engines}")
    return status


def cmd_doctor(args: argparse.Namespace) -> int:
    from fairlane.doctor import run_doctor

    return run_doctor(args.config)


def cmd_sim(args: argparse.Namespace) -> int:
    from fairlane.engines.sim.main import main as sim_main

    return sim_main(args.sim_args)


def cmd_hash_key(args: argparse.Namespace) -> int:
    key = args.key if args.key is not None else getpass.getpass("API key: ")
    if not key:
        print("empty key", file=sys.stderr)
        return 1
    print(hash_key(key))
    return 0


def _running_pid(args: argparse.Namespace) -> int | None:
    from fairlane.rundir import RunDir

    run_dir = RunDir(args.run_dir or default_run_dir(args.config))
    try:
        return int(run_dir.pid_file.read_text())
    except (OSError, ValueError):
        print(f"no running fairlane found ({run_dir.pid_file} missing)", file=sys.stderr)
        return None


def cmd_reload(args: argparse.Namespace) -> int:
    pid = _running_pid(args)
    if pid is None:
        return 1
    os.kill(pid, signal.SIGHUP)
    print(f"sent SIGHUP to fairlane serve (pid {pid}); see fairlane_config_generation")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fairlane.status import run_status

    return run_status(args.config, once=args.once, interval_s=args.interval)


def cmd_bench(args: argparse.Namespace) -> int:
    from fairlane.benchcli import run_bench

    return run_bench(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairlane", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fairlane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run Envoy + the worker + engines for a policy")
    p.add_argument("--config", "-c", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, help="default: /tmp/fairlane/<port>")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate policy files offline")
    p.add_argument("files", nargs="+", type=Path)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("doctor", help="check this machine can run Fairlane")
    p.add_argument("--config", "-c", type=Path)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("sim", help="run the built-in engine simulator", add_help=False)
    p.add_argument("sim_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("hash-key", help="print the sha256 of an API key for the policy")
    p.add_argument("key", nargs="?")
    p.set_defaults(func=cmd_hash_key)

    for name, func, text in (
        ("reload", cmd_reload, "reload the policy of a running serve"),
        ("status", cmd_status, "live per-tenant table"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", "-c", type=Path, required=True)
        p.add_argument("--run-dir", type=Path)
        if name == "status":
            p.add_argument(
                "--once",
                action="store_true",
                help="print one table and exit, after --interval: TOKENS/S is the rate "
                "between two samples that far apart",
            )
            p.add_argument(
                "--interval", type=float, default=1.0, help="seconds between samples (default 1)"
            )
        p.set_defaults(func=func)

    p = sub.add_parser("bench", help="benchmarks (see docs/benchmarks.md)", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `bench` and `sim` own their arguments (argparse's REMAINDER misses a leading --help).
    if argv and argv[0] in ("bench", "sim"):
        args = argparse.Namespace(bench_args=argv[1:], sim_args=argv[1:])
        return cmd_bench(args) if argv[0] == "bench" else cmd_sim(args)
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
