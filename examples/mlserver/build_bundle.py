"""Builds a small scikit-learn model bundle for MLServer (run with MLServer's Python).

    python examples/mlserver/build_bundle.py OUT_DIR --version v1 [--slope 2.0] [--broken]

OUT_DIR gets model.joblib (a LinearRegression y = slope * x + 1), model-settings.json
for mlserver_sklearn, and nothing else; stage it with
`forecaster-sidecar stage OUT_DIR --version v1`, which adds the manifest with checksums.
`--broken` writes a model.joblib that is not a model (its checksum is still right):
MLServer refuses to load it, which is what a rollback is for. No binaries are committed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODEL_NAME = "forecaster"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--version", required=True)
    parser.add_argument("--slope", type=float, default=2.0)
    parser.add_argument("--broken", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=False)
    if args.broken:
        (args.out / "model.joblib").write_bytes(b"this is not a joblib file\n")
    else:
        import joblib
        import numpy as np
        from sklearn.linear_model import LinearRegression

        x = np.arange(10, dtype=float).reshape(-1, 1)
        model = LinearRegression().fit(x, args.slope * x.ravel() + 1.0)
        joblib.dump(model, args.out / "model.joblib")
    settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": args.version},
    }
    (args.out / "model-settings.json").write_text(json.dumps(settings, indent=2))


if __name__ == "__main__":
    main()
