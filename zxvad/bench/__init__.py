"""Benchmarks as commands: each prints readable lines and, last, one JSON line of its figures."""
