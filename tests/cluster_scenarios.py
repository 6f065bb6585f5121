"""Fault scenarios on a Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`).

Each runs in its own process (a test's shared local Ray cannot be a cluster), trains on the
simulated backend and prints one JSON line with what the test asserts:

    python -m tests.cluster_scenarios node_loss RUN_DIR
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from find_ray.config import load_config
from find_ray.system.driver import RayTrainer

SIMULATED = [
    "model.backend=simulated",
    "model.latency_s=0.2",
    "reward.name=brightness",
    "train.prompts=[p one,p two]",
    "train.samples_per_prompt=8",
    "train.iterations=16",
    "eval.samples_per_prompt=4",
    "ray.rollouts_per_task=4",
    "learner.loss.drcm_hidden=8",
    "learner.drcm_steps=2",
    "ray.torch_threads=1",
]
ROLLOUT_NODE = {"rollout_node": 1}  # rollout actors live on worker nodes only
REPLACEMENT = {"num_cpus": 1, "resources": ROLLOUT_NODE}
NEW_NODE_AFTER_S = 5.0


def start_cluster(workers: int) -> tuple[Cluster, list]:
    """A head (learner and reward actors: the `head` resource) and `workers` rollout nodes."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"head": 4}, "include_dashboard": False},
    )
    nodes = [cluster.add_node(**REPLACEMENT) for _ in range(workers)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, nodes


def node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def node_loss(run_dir: Path) -> dict:
    """Two rollout nodes; after update 3 the node of rollout actor 0 is removed and a fresh one
    added (as an autoscaler would). Reports the accounting and what was in flight then."""
    cluster, nodes = start_cluster(2)
    overrides = [
        "ray.num_rollout_actors=2",
        "ray.rollout_num_cpus=1",
        "ray.rollout_resources={rollout_node: 1}",
        "ray.reward_resources={head: 1}",
        "ray.learner_resources={head: 1}",
        f"train.out_dir={run_dir}",
    ]
    trainer = RayTrainer(load_config(None, [*SIMULATED, *overrides]))
    seen: dict = {}

    def remove_a_rollout_node(t: RayTrainer) -> None:
        if seen or t.version != 3:
            return
        node_id = node_of(t.actors.rollout[0])
        seen["in_flight"] = len(t.ledger.in_flight)
        seen["dropped_before"] = t.ledger.totals()["dropped"]
        cluster.remove_node(next(n for n in nodes if n.node_id == node_id))
        # the fresh node comes a few seconds later, as an autoscaler's would: meanwhile the
        # lost actor is restarting and must get no work
        threading.Timer(NEW_NODE_AFTER_S, cluster.add_node, kwargs=REPLACEMENT).start()
        seen["moved"] = True

    trainer.after_update = remove_a_rollout_node
    try:
        result = trainer.run()
    finally:
        ray.shutdown()
        cluster.shutdown()
    totals = json.loads((result.run_dir / "metrics.json").read_text())["rollouts"]
    return {"totals": totals, **seen, "per_task": trainer.cfg.ray.rollouts_per_task, "actors": 2}


SCENARIOS = {"node_loss": node_loss}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](Path(sys.argv[2]))))
