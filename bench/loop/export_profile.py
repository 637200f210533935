"""Export the loop benchmark's measured profile as an emulated-accelerator profile.

The emulated accelerator (``emulated://NAME`` model URIs) reads profiles from
``runtime/batchpilot_runtime/profiles/``. This writes the one measured on this project's
own runtime: the line ``t(b) = a + c*b`` fitted by ``bench.loop.profile`` to the real
model's batch times, the model-load time it measured, and the spread of batch times the
real server recorded under load in ``bench.loop.validate --write-served``, in run order.

    python -m bench.loop.export_profile
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROFILES = HERE.parents[1] / "runtime" / "batchpilot_runtime" / "profiles"


def emulated_profile(profile: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """The emulated profile document from ``bench.loop.profile``'s and ``validate``'s JSON."""
    fit = profile["fit"]
    return {
        "accelerator": f"one CPU thread running {profile['model']} (torch, float32)",
        "provenance": (
            "measured: t(b) is bench.loop.profile's least-squares line over batch sizes "
            f"1-{profile['batch_sizes'][-1]} ({profile['rounds']} rounds, "
            f"{profile['torch_threads']} torch thread), load_seconds its model load; the "
            f"spread is {served['source']}, each batch's time over the median, in run order"
        ),
        "measured": True,
        "base_ms": round(fit["intercept_seconds"] * 1000, 3),
        "per_item_ms": round(fit["per_item_seconds"] * 1000, 3),
        "load_seconds": round(profile["load_seconds"], 1),
        "max_batch": None,
        "dimensions": 384,
        "max_length": 512,
        "spread": {"ratios": served["jitter"]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=HERE / "service_profile.json")
    parser.add_argument("--served", type=Path, default=HERE / "served.json")
    parser.add_argument("--out", type=Path, default=PROFILES / "minilm-l6-cpu.json")
    args = parser.parse_args(argv)
    document = emulated_profile(
        json.loads(args.profile.read_text()), json.loads(args.served.read_text())
    )
    args.out.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
