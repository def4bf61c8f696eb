"""`python -m cosyfast.bench` / `cosyfast bench`: the benchmark protocol of benchmarks/README.md."""
from .main import main

__all__ = ["main"]
