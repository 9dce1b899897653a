"""python -m train: train ResNet-50 on CIFAR-10 (see --help; every flag is a TrainConfig field)."""

from __future__ import annotations

import shlex
import sys
import time

from resnet.weights import WeightsError

from .config import ConfigError, config_from_args
from .data import DataError
from .trainer import TrainingDiverged, fit


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_args(argv)
    try:
        result = fit(cfg, command_started=started)
    except (ConfigError, DataError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not result.finished:
        again, skip = [], False
        for a in argv:  # the same command, minus what would stop or restart it
            if skip or a in ("--resume", "--overwrite") or a.startswith("--stop-after-steps"):
                skip = a == "--stop-after-steps"
                continue
            again.append(a)
        again.append("--resume")
        print(f"to continue: python -m train {shlex.join(again)}", file=sys.stderr)
        return 128 + result.signal if result.signal else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
