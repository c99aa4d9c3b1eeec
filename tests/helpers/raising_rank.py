"""A rank body for the process-group tests (`python -m tests.helpers.raising_rank RUN_DIR` under
torchrun, through `worker.ranks.main`): rank 1 raises at once while rank 0 waits for it in a
collective, as a rank does when a peer fails in the middle of a step."""

from __future__ import annotations

import sys
from typing import Any

import torch

from tas.core.distributed import DataParallel
from tas.settings import Settings
from worker import ranks


def body(run: dict[str, Any], settings: Settings, parallel: DataParallel) -> None:
    if parallel.rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    parallel.sum(torch.ones(1))  # waits on rank 1, which is gone


if __name__ == "__main__":
    sys.exit(ranks.main(body=body))
