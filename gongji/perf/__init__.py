"""Measuring Gongji: the load harness, the benchmark, the latency budget, the synthetic population."""
