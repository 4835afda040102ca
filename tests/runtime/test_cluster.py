"""A search on a 2-node Ray cluster on one machine (ray.cluster_utils.Cluster), stored in a real
PostgreSQL server: workers land on both nodes, every trial lands in the shared storage."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from ray.cluster_utils import Cluster
from searchfixture import write_experiment

from evomerge.experiment import Experiment
from evomerge.runtime.driver import SearchDriver
from evomerge.store import open_run


@pytest.mark.slow
@pytest.mark.postgres
def test_two_node_cluster_with_postgresql(tmp_path, tiny_family, postgres_url) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        path = write_experiment(tmp_path / "exp", tiny_family, trials=4)
        summary = SearchDriver(
            Experiment.load(path), tmp_path / "run", storage=postgres_url, ray_address=cluster.address
        ).run()
    finally:
        cluster.shutdown()
    assert summary.complete == 4 and summary.storage == postgres_url
    trials = open_run(tmp_path / "run").trials()
    assert len(trials) == 7 and all(t.state == TrialState.COMPLETE for t in trials)
    nodes = {t.user_attrs["worker"].rsplit("/node-", 1)[1] for t in trials}
    assert len(nodes) == 2, f"workers ran on {nodes}; expected both nodes"
