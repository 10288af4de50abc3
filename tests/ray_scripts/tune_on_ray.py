"""Run inside a network namespace with only loopback: tune_model on Ray, optionally killing one
Ray worker mid-trial, optionally on a two-node cluster. Prints one JSON line."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch


def ray_workers_running_trials() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::_ray_evaluate" in cmd:
                pids.append(int(d.name))
    return pids


def main() -> None:
    torch.set_num_threads(1)
    import ray

    from hporl import Policy, TuneOptions, tune_model
    from hporl.executors import RayExecutor
    from hporl.tasks import builtin

    policy_dir, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    cluster = None
    address = None
    if mode == "two_nodes":
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": False},
        )
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        address = cluster.address
    killed: list[int] = []

    finished = threading.Event()

    def killer() -> None:
        """Kill one worker while it is inside a trial (checked again just before the kill)."""
        while not finished.is_set() and not killed:
            pids = ray_workers_running_trials()
            if pids:
                time.sleep(0.2)  # well inside the trial
                if pids[0] in ray_workers_running_trials():
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            time.sleep(0.02)

    if mode == "kill":
        threading.Thread(target=killer, daemon=True).start()
    epochs = 30 if mode == "kill" else 2
    start = time.perf_counter()
    result = tune_model(
        data=builtin("digits", epochs=epochs),
        policy=Policy.load(policy_dir),
        n_trials=4,
        executor=RayExecutor(2, address=address),
        out=out,
        options=TuneOptions(compare_default=False),
    )
    seconds = time.perf_counter() - start
    finished.set()
    addresses = []
    if cluster is not None:
        ray.init(address=address)
        addresses = [n["NodeManagerAddress"] for n in ray.nodes()]
        nodes = len(ray.nodes())
        ray.shutdown()
        cluster.shutdown()
    else:
        nodes = 1
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses
    print(
        json.dumps(
            {
                "trials": result.trials,
                "test_metric": result.test_metric,
                "killed": killed,
                "nodes": nodes,
                "addresses": addresses,
                "seconds": seconds,
                "ray_still_up": ray.is_initialized(),
            }
        )
    )


if __name__ == "__main__":
    main()
