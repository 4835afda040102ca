"""Local Ray's workers run at the search driver's priority (Ray's default makes them 15 nicer)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import os
from types import SimpleNamespace
import ray
from evomerge.runtime.cluster import init_ray
init_ray(SimpleNamespace(spec=SimpleNamespace(ray=SimpleNamespace(num_cpus=1))), None)
@ray.remote
def niceness():
    return os.nice(0)
print(os.nice(0), ray.get(niceness.remote()))
ray.shutdown()
"""


def test_local_workers_run_at_the_drivers_niceness() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    command = ["nice", "-n", "3", sys.executable, "-c", SCRIPT]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    driver, worker = map(int, result.stdout.split()[-2:])
    assert driver >= 3 and worker == driver  # Ray's default would give min(driver + 15, 19)
