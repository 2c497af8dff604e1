"""Make data/train.csv and data/test.csv, the bundled data set; data/README.md has the recipe.

    python data/make_data.py        # rewrites both files, the same bytes every time
"""

from pathlib import Path

import numpy as np

N_TRAIN, N_TEST, N_FEATURES = 6000, 1500, 32
NOISE = 0.1  # uniform on [-NOISE, NOISE]: variance NOISE**2 / 3, the lowest MSE any model reaches


def make_rows(n, rng, offset, scale, w_a, w_b):
    """(n, 33) rows: 32 raw features, then the target; and the MSE of the noise they hold."""
    z = rng.standard_normal((n, N_FEATURES))
    x = np.array([float(f"{v:.4g}") for v in (offset + scale * z).flat]).reshape(n, N_FEATURES)
    z = (x - offset) / scale  # the target is a function of the features as written
    a, b = z @ w_a, z @ w_b  # two hidden directions, each ~ N(0, 1)
    signal = 0.1 + 0.8 / (1 + np.exp(-(0.9 * a + 0.8 * np.log(np.cosh(b)) - 0.15)))
    y = (signal + rng.uniform(-NOISE, NOISE, n)).round(4)  # signal in (0.1, 0.9): y in [0, 1]
    return np.column_stack([x, y]), np.mean((y - signal) ** 2)


def main():
    rng = np.random.default_rng(2022)
    scale = 10.0 ** rng.uniform(-2, 3, N_FEATURES)  # column scales from 0.01 to 1000
    offset = scale * rng.uniform(-3, 3, N_FEATURES)
    w_a, w_b = (w / np.linalg.norm(w) for w in rng.standard_normal((2, N_FEATURES)))
    header = ",".join([f"x{i}" for i in range(N_FEATURES)] + ["y"])
    for name, n in [("train.csv", N_TRAIN), ("test.csv", N_TEST)]:
        rows, noise_mse = make_rows(n, rng, offset, scale, w_a, w_b)
        print(f"{name}: {n} rows; MSE of the true signal (the noise alone): {noise_mse:.5f}")
        np.savetxt(Path(__file__).with_name(name), rows, fmt="%.4g", delimiter=",",
                   header=header, comments="")


if __name__ == "__main__":
    main()
