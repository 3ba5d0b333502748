"""Writes the benchmark's input: a safetensors file of 1,000 tensors and about 2.1 GB, written
by the reference `safetensors` library (numpy backend), deterministic from a seed."""
import sys

import numpy as np
from safetensors.numpy import save_file


def main(path: str, count: int = 1000, target_bytes: int = 2_150_000_000) -> None:
    rng = np.random.default_rng(0)
    per = target_bytes // count
    tensors = {}
    for i in range(count):
        dtype = [np.float32, np.float16, np.float32, np.int64][i % 4]
        n = per // np.dtype(dtype).itemsize
        cols = 320
        rows = max(1, n // cols)
        if dtype == np.int64:
            a = rng.integers(-1000, 1000, size=(rows, cols), dtype=np.int64)
        else:
            a = rng.standard_normal((rows, cols), dtype=np.float32).astype(dtype)
        tensors[f"model.layers.{i:04d}.weight"] = a
    save_file(tensors, path, metadata={"format": "pt"})


if __name__ == "__main__":
    main(sys.argv[1])
