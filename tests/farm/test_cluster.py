"""Replica sizing from a stage's farm settings, and a multi-GPU replica placed in a placement group."""

from __future__ import annotations

import pytest

from cst_dist.config import GenerateConfig
from cst_dist.farm import FarmError
from cst_dist.farm.cluster import FarmSettings, Layout, actor_options, replica_layout, reserve_replica


@pytest.mark.parametrize(
    ("resources", "settings", "expected"),
    [
        ({"CPU": 2}, {}, (1, 0, 1)),
        ({"CPU": 2}, {"num_replicas": 2}, (2, 0, 1)),
        ({"CPU": 64, "GPU": 8}, {}, (8, 1, 1)),
        ({"CPU": 64, "GPU": 8}, {"gpus_per_replica": 2}, (4, 2, 1)),
        ({"CPU": 64, "GPU": 8}, {"gpus_per_replica": 0, "num_replicas": 4, "cpus_per_replica": 8}, (4, 0, 8)),
    ],
)
def test_replica_layout(resources, settings, expected):
    layout = replica_layout(FarmSettings("generate", **settings), resources)
    assert (layout.replicas, layout.gpus, layout.cpus) == expected


def test_replica_layout_refuses_what_the_cluster_lacks():
    with pytest.raises(FarmError, match="generate.gpus_per_replica=2 but the Ray cluster has 0 GPUs"):
        replica_layout(FarmSettings("generate", gpus_per_replica=2), {"CPU": 8})
    with pytest.raises(FarmError, match="generate.num_replicas=3 needs 0 GPUs and 3 CPUs"):
        replica_layout(FarmSettings("generate", num_replicas=3), {"CPU": 2})


def test_farm_settings_are_read_from_a_stage_section():
    """Any config section with the farm's fields by name: the evaluator passes its own, named in its messages."""
    generate = GenerateConfig(num_replicas=3, gpus_per_replica=2, cpus_per_replica=4, max_retries=1,
                              connect_timeout_s=5.0)
    assert FarmSettings.of("generate", generate) == FarmSettings("generate", 3, 2, 4, 1, 5.0)
    assert FarmSettings.of("generate", GenerateConfig()) == FarmSettings("generate")  # the same defaults


def test_multi_gpu_replica_is_placed_in_a_placement_group(ray_cluster):
    """Ray resource accounting only (the 2 GPUs are declared, torch runs on CPU): the replica holds both GPUs in
    one bundle, and a replica larger than the cluster fails within the timeout instead of waiting forever."""
    import ray

    @ray.remote
    class Probe:
        def gpus(self):
            return sorted(ray.get_gpu_ids())

    layout = Layout(replicas=1, gpus=2, cpus=1)
    group = reserve_replica(layout, timeout_s=20)
    try:
        probe = Probe.options(**actor_options(layout, "probe-2gpu", group)).remote()
        assert ray.get(probe.gpus.remote(), timeout=60) == [0, 1]
        ray.kill(probe)
    finally:
        ray.util.remove_placement_group(group)
    with pytest.raises(FarmError, match="no node had 4 free GPUs for a replica within 1s"):
        reserve_replica(Layout(replicas=1, gpus=4, cpus=1), timeout_s=1)
