"""Fault cases for benchmarks/faults.py, one module per family (see its docstring)."""
