"""Fairlane's benchmarks: `fairlane bench overhead | decisions | noisy-neighbor`.

Each writes ``bench/results/<name>.json`` (and a PNG where a chart helps) and prints a
table; docs/benchmarks.md has the commands and the measured numbers.
"""
