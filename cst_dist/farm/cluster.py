"""Ray for the farm: join the cluster at RAY_ADDRESS or start a local one, size the replicas, place them.

On Slurm (or any cluster) `ray start --head` / `ray start --address` run first and the driver joins through
RAY_ADDRESS; without it a local instance is started and shut down again, and dies with the driver even when the
driver is killed (`cst_dist.farm.reaper`). A replica that needs several GPUs gets a
placement group of one STRICT_PACK bundle: the GPUs sit on one node, the wait for them is bounded, and a replacement
actor reuses the same reserved bundle, so no other job takes the GPUs while a shard is retried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from cst_dist.farm import FarmError
from cst_dist.farm.reaper import start_reaper, stop_reaper

log = logging.getLogger(__name__)
DEFAULT_GCS_PORT = 6379


def check_reachable(address: str, timeout_s: float) -> None:
    """A TCP connection to the head's GCS port, bounded: `ray.init` itself retries for minutes on a dead address."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", str(DEFAULT_GCS_PORT))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise FarmError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address!r} within {timeout_s:g}s ({exc}); start it with "
            "`ray start --head` (and `ray start --address=HEAD:6379` on the other nodes), or unset RAY_ADDRESS to run "
            "on a local Ray instance"
        ) from None


def actor_device(num_gpus: int, num_cpus: int) -> str:
    """The device a replica runs on: "cuda" when it was given GPUs and sees one, else "cpu", limited to its share of
    the cores (`num_cpus` threads, not every core of the node)."""
    import torch

    if num_gpus and torch.cuda.is_available():
        return "cuda"
    torch.set_num_threads(num_cpus)
    return "cpu"


def current_node() -> str:
    """Where this process runs: its Ray node's id inside a Ray worker (two nodes may share a host), else the host
    name. Workers record it with each shard, so a run shows which nodes did the work."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


@contextlib.contextmanager
def ray_session(timeout_s: float) -> Iterator[str]:
    """Yields where the run executes: an already connected driver, the cluster at RAY_ADDRESS, or a local instance
    (started here, shut down on exit)."""
    import ray

    if ray.is_initialized():  # a caller (tests, a notebook) already connected: use it and leave it running
        yield "existing Ray connection"
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        check_reachable(address, timeout_s)
    reaper = None if address else start_reaper()  # a local instance dies with this process, even on kill -9
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # "local": a new instance, never a cluster named in a stale /tmp/ray/ray_current_cluster
            ray.init(address="local", include_dashboard=False, log_to_driver=True)
    except ConnectionError as exc:
        stop_reaper(reaper)
        raise FarmError(f"cannot connect to Ray (RAY_ADDRESS={address!r}): {exc}") from None
    try:
        yield f"Ray cluster at {address}" if address else "local Ray instance"
    finally:
        ray.shutdown()
        stop_reaper(reaper)


@dataclass(frozen=True)
class FarmSettings:
    """The farm's part of a stage's config section. `section` is that section's name: messages name the key to
    change (`generate.num_replicas=3 needs ...`) and actors are named `cst-<section>-...`."""

    section: str
    num_replicas: int | None = None  # default: GPUs // gpus_per_replica, or 1 without GPUs
    gpus_per_replica: int | None = None  # default: 1 if the cluster has GPUs, else 0 (CPU actors)
    cpus_per_replica: int = 1
    max_retries: int = 2  # re-runs of a shard whose actor died, before the run fails
    connect_timeout_s: float = 30.0  # bound on reaching RAY_ADDRESS and placing a replica

    @classmethod
    def of(cls, section: str, config: Any) -> FarmSettings:
        """From a config section holding these fields by name: `FarmSettings.of("generate", config.generate)`."""
        return cls(section, **{f.name: getattr(config, f.name) for f in fields(cls) if f.name != "section"})


@dataclass(frozen=True)
class Layout:
    """How many model replicas (actors) run, and what each one holds."""

    replicas: int
    gpus: int
    cpus: int


def replica_layout(settings: FarmSettings, resources: dict[str, float]) -> Layout:
    """One replica per GPU (or per group of `gpus_per_replica` GPUs); one CPU replica without GPUs. Asking for more
    than the cluster has (`resources`: ray.cluster_resources()) is an error here, not an actor that waits forever."""
    total_gpus, total_cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    section = settings.section
    gpus = settings.gpus_per_replica if settings.gpus_per_replica is not None else (1 if total_gpus else 0)
    if gpus > total_gpus:
        raise FarmError(f"{section}.gpus_per_replica={gpus} but the Ray cluster has {total_gpus} GPUs")
    replicas = settings.num_replicas or (total_gpus // gpus if gpus else 1)
    need_gpus, need_cpus = replicas * gpus, replicas * settings.cpus_per_replica
    if need_gpus > total_gpus or need_cpus > total_cpus:
        raise FarmError(
            f"{section}.num_replicas={replicas} needs {need_gpus} GPUs and {need_cpus} CPUs; the Ray cluster has "
            f"{total_gpus} GPUs and {total_cpus} CPUs (lower {section}.num_replicas or {section}.cpus_per_replica)"
        )
    return Layout(replicas, gpus, settings.cpus_per_replica)


def reserve_replica(layout: Layout, timeout_s: float, setting: str = "gpus_per_replica") -> Any | None:
    """A ready placement group for one multi-GPU replica, or None when the replica has at most one GPU. `setting`
    is the config key named when no node has the GPUs (`generate.gpus_per_replica`)."""
    if layout.gpus <= 1:
        return None
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": layout.cpus, "GPU": layout.gpus}], strategy="STRICT_PACK")
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise FarmError(
            f"no node had {layout.gpus} free GPUs for a replica within {timeout_s:g}s ({setting}; a replica's GPUs "
            "must sit on one node)"
        ) from None
    return group


def actor_options(layout: Layout, name: str, group: Any | None) -> dict[str, Any]:
    """`.options(...)` of one replica actor: its GPUs and CPUs, inside its placement group if it has one."""
    options: dict[str, Any] = {"num_cpus": layout.cpus, "num_gpus": layout.gpus, "name": name, "max_restarts": 0}
    if group is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # Child tasks (vLLM's tensor-parallel workers, if any) stay inside the replica's reservation.
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
    return options
