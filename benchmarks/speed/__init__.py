"""The speed suite behind ``benchmarks/run.py``: rows, the matmul peak, profiling and the report."""
