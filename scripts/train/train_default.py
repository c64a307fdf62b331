#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Trains the default 16-32-4 model of virtio-nn (see weights/README.md).

Dataset: scikit-learn's bundled copy of the UCI "Optical Recognition of
Handwritten Digits" test set (load_digits: 1797 8x8 images, each pixel the
count 0..16 of set pixels in a 4x4 block of a 32x32 bitmap). Nothing is
downloaded: the data ships inside the scikit-learn wheel.

Features: each image pooled 2x2 into a 4x4 thumbnail (16 features, each the
count 0..64 of set pixels in an 8x8 block of the bitmap: whole numbers, as
/proc/neural_network/predict takes them). Classes: the digits 0, 1, 2, 3.

Model: 16 -> 32 (ReLU) -> 4 (identity, logits), scikit-learn's MLPClassifier
(Adam, L2 1e-3) on standardized features; the standardization is then folded
into the first layer, so the exported model takes the raw counts.

Writes, in the output directory:
  default-float.safetensors  the float state_dict (0.weight, 0.bias,
                             2.weight, 2.bias; F32), as torch's
                             nn.Sequential(Linear, ReLU, Linear) names it
  default-test.csv           the held-out test split (16 features, label)
and prints the float accuracy on the test split. The quantization to Q16.16
is `nn-model import-safetensors` (see train-default.sh).
"""

import argparse
import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 0


def features():
    d = load_digits()
    keep = d.target < 4
    imgs = d.images[keep].astype(np.int64)  # (n, 8, 8), 0..16
    x = imgs.reshape(-1, 4, 2, 4, 2).sum(axis=(2, 4)).reshape(-1, 16)  # 0..64
    return x, d.target[keep].astype(np.int64)


def forward(layers, x):
    h = x.astype(np.float64)
    for k, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64).T + b.astype(np.float64)
        if k + 1 < len(layers):
            h = np.maximum(h, 0.0)
    return h


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="weights")
    args = ap.parse_args()

    x, y = features()
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=SEED
    )
    mu = x_tr.mean(axis=0)
    sd = x_tr.std(axis=0)
    sd[sd == 0] = 1.0
    clf = MLPClassifier(
        hidden_layer_sizes=(32,),
        activation="relu",
        solver="adam",
        alpha=1e-3,
        max_iter=4000,
        tol=1e-6,
        n_iter_no_change=50,
        random_state=SEED,
    )
    clf.fit((x_tr - mu) / sd, y_tr)

    # Fold the standardization into layer 0: W (x - mu) / sd + b.
    w0 = clf.coefs_[0].T / sd  # [32, 16]
    b0 = clf.intercepts_[0] - w0 @ mu
    w1 = clf.coefs_[1].T  # [4, 32]
    b1 = clf.intercepts_[1]
    # C order: safetensors.numpy writes the array's buffer as it lies, and
    # the transposes above are Fortran-ordered views.
    tensors = {
        "0.weight": np.ascontiguousarray(w0, dtype=np.float32),
        "0.bias": np.ascontiguousarray(b0, dtype=np.float32),
        "2.weight": np.ascontiguousarray(w1, dtype=np.float32),
        "2.bias": np.ascontiguousarray(b1, dtype=np.float32),
    }
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "default-float.safetensors")
    save_file(tensors, path, metadata={"source": "scripts/train/train_default.py"})

    # Accuracy of the float model as written (read back from the file).
    t = load_file(path)
    layers = [(t["0.weight"], t["0.bias"]), (t["2.weight"], t["2.bias"])]
    acc_float = float((forward(layers, x_te).argmax(axis=1) == y_te).mean())
    acc_train = float((forward(layers, x_tr).argmax(axis=1) == y_tr).mean())
    acc_sklearn = float(clf.score((x_te - mu) / sd, y_te))
    with open(os.path.join(args.out_dir, "default-test.csv"), "w") as f:
        f.write(",".join([f"f{i}" for i in range(16)] + ["label"]) + "\n")
        for xs, ys in zip(x_te, y_te):
            f.write(",".join(str(int(v)) for v in xs) + f",{int(ys)}\n")
    print(
        json.dumps(
            {
                "samples": int(len(y)),
                "train": int(len(y_tr)),
                "test": int(len(y_te)),
                "test_per_class": np.bincount(y_te).tolist(),
                "iterations": int(clf.n_iter_),
                "float_train_accuracy": acc_train,
                "float_test_accuracy": acc_float,
                "float_test_correct": int(round(acc_float * len(y_te))),
                "sklearn_test_accuracy": acc_sklearn,
                "max_abs_weight": float(max(np.abs(t).max() for t in tensors.values())),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
