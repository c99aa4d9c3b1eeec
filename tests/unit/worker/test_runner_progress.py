"""What a succeeded job's progress shows."""

from __future__ import annotations

from worker.runner import _completed


def test_a_finished_job_keeps_its_last_measured_throughput() -> None:
    reported = {"epoch": 1, "epochs": 3, "step": 0, "steps_per_epoch": 6, "fraction": 0.0}
    done = _completed({**reported, "samples_per_second": 0.0}, 3, {"samples_per_second": 812.5})
    assert done is not None
    assert (done["fraction"], done["epoch"], done["step"]) == (1.0, 3, 6)
    assert done["samples_per_second"] == 812.5  # the last epoch's, not the unmeasured 0.0
    kept = _completed({**reported, "samples_per_second": 950.0}, 3, {"samples_per_second": 812.5})
    assert kept is not None and kept["samples_per_second"] == 950.0
