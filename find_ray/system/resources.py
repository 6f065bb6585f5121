"""Do the actors a config asks for fit its own devices and the Ray cluster? Checked after
ray.init and before any actor starts, so that a config that would wait forever (GPUs asked of
a cluster without one, an actor larger than every node) fails in one line naming the key to
change and how.

`device_problems` (the config against itself, `check_devices`: before Ray starts) and
`cluster_problems` (against the nodes' resources, plain dicts) are pure; `check_resources`
reads Ray's state. On a Ray that this driver started (no node will join) the cluster's
problems are errors; on a cluster it joined, which an autoscaler may grow, they are one-line
warnings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import ray

from find_ray.backends import model_devices
from find_ray.config import FindRayConfig
from find_ray.errors import ConfigError
from find_ray.rewards import scorer_devices

log = logging.getLogger(__name__)
EPS = 1e-9  # fractional resources add up with rounding error


@dataclass(frozen=True)
class ActorAsk:
    """What one kind of actor asks Ray for, and the devices of what it loads."""

    kind: str  # rollout | reward | learner
    count: int
    cpus: float
    gpus: float
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    devices: dict[str, str] = field(default_factory=dict)  # config key -> device
    cpu_only: bool = False  # no config key moves its work to a GPU

    def needs(self) -> dict[str, float]:
        """Ray resources of one actor, those it asks for (> 0) only."""
        asked = {"CPU": self.cpus, "GPU": self.gpus, **self.resources}
        return {name: amount for name, amount in asked.items() if amount > 0}

    def key(self, resource: str) -> str:
        if resource in ("CPU", "GPU"):
            return f"ray.{self.kind}_num_{resource.lower()}s"
        return f"ray.{self.kind}_resources"


def actor_asks(cfg: FindRayConfig) -> list[ActorAsk]:
    """The rollout actors (model.device, for a real pipeline), the reward actors (the devices
    of their learned scorers) and the learner (CPU only)."""
    r = cfg.ray

    def custom(kind: str) -> dict[str, float]:
        return dict(getattr(r, f"{kind}_resources"))

    return [
        ActorAsk(
            "rollout",
            r.num_rollout_actors,
            r.rollout_num_cpus,
            r.rollout_num_gpus,
            custom("rollout"),
            model_devices(cfg.model),
        ),
        ActorAsk(
            "reward",
            r.num_reward_actors,
            r.reward_num_cpus,
            r.reward_num_gpus,
            custom("reward"),
            scorer_devices(cfg),
        ),
        ActorAsk("learner", 1, r.learner_num_cpus, r.learner_num_gpus, custom("learner"), {}, True),
    ]


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def device_problems(asks: list[ActorAsk]) -> list[str]:
    """A device on CUDA in an actor that asks Ray for no GPU (Ray hides the GPUs from it), a
    GPU share in an actor that puts nothing on it; one sentence each, naming key and fix."""
    problems = []
    for a in asks:
        key, cuda = a.key("GPU"), [k for k, d in a.devices.items() if is_cuda(d)]
        if cuda and a.gpus <= 0:
            on = " and ".join(f"{k}={a.devices[k]}" for k in cuda)
            problems.append(
                f"config key '{key}': {on} but the {a.kind} actors ask Ray for no GPU, so they "
                f"see none (Ray hides the GPUs); set {key}=0.5 (or 1) or {cuda[0]}=cpu"
            )
        elif a.gpus > 0 and a.cpu_only:
            problems.append(
                f"config key '{key}': {a.gpus:g} GPU for the {a.kind}, which runs on the CPU "
                f"(no config key moves it), so the GPU would sit idle; set {key}=0"
            )
        elif a.gpus > 0 and a.devices and not cuda:
            on = " and ".join(f"{k}={d}" for k, d in a.devices.items())
            problems.append(
                f"config key '{key}': {a.gpus:g} GPU per {a.kind} actor but {on} puts nothing "
                f"on it; set {key}=0 or {next(iter(a.devices))}=cuda"
            )
    return problems


def _no_gpu(a: ActorAsk) -> str:
    key = a.key("GPU")
    cpu = "".join(f" and {k}=cpu" for k, d in a.devices.items() if is_cuda(d))
    return (
        f"config key '{key}': the {a.kind} actors ask for {a.gpus:g} GPU each but the Ray "
        f"cluster has no GPU; set {key}=0{cpu}, or join a cluster with GPUs (ray.address)"
    )


def _too_large(a: ActorAsk, nodes: list[dict[str, float]]) -> str | None:
    """The sentence for an actor that no single node can hold, else None."""
    needs = a.needs()
    if any(all(n.get(r, 0.0) + EPS >= v for r, v in needs.items()) for n in nodes):
        return None
    for resource, amount in needs.items():
        largest = max((n.get(resource, 0.0) for n in nodes), default=0.0)
        if largest + EPS < amount:
            key = a.key(resource)
            fix = f"set {key}={largest:g} or less"
            if resource not in ("CPU", "GPU"):
                fix = f"start a node with it (`ray start --resources`) or drop it from {key}"
            return (
                f"config key '{key}': a {a.kind} actor asks for {amount:g} {resource} but the "
                f"largest Ray node has {largest:g}; {fix}"
            )
    together = ", ".join(f"{r}={v:g}" for r, v in needs.items())
    keys = ", ".join(f"'{a.key(r)}'" for r in needs)
    return f"config keys {keys}: a {a.kind} actor asks for {together} but no Ray node has all"


def cluster_problems(asks: list[ActorAsk], nodes: list[dict[str, float]]) -> list[str]:
    """Why the actors cannot all start on these nodes (each a dict of its Ray resources):
    GPUs asked where there are none, an actor larger than every node, more in all than the
    cluster has. One sentence each, naming the key and its fix; [] when they fit."""
    problems, asks = [], [a for a in asks if a.count > 0]
    total = {r: sum(n.get(r, 0.0) for n in nodes) for a in asks for r in a.needs()}
    no_gpu = [a for a in asks if a.gpus > 0 and total["GPU"] <= EPS]
    problems += [_no_gpu(a) for a in no_gpu]
    problems += [p for a in asks if a not in no_gpu and (p := _too_large(a, nodes))]
    for resource, have in total.items():
        users = [a for a in asks if resource in a.needs()]
        need = sum(a.count * a.needs()[resource] for a in users)
        if need <= have + EPS or have <= EPS:  # none at all: said per actor above
            continue
        parts = ", ".join(f"{a.count} {a.kind} x {a.needs()[resource]:g}" for a in users)
        keys = sorted({f"ray.num_{a.kind}_actors" for a in users if a.count > 1})
        keys += [a.key(resource) for a in users]
        problems.append(
            f"config keys {', '.join(repr(k) for k in keys)}: the actors ask for {need:g} "
            f"{resource} in all ({parts}) but the Ray cluster has {have:g}; lower them"
        )
    return problems


def check_devices(cfg: FindRayConfig) -> None:
    """One-line ConfigError when the `ray.*_num_gpus` keys contradict the devices (pure)."""
    problems = device_problems(actor_asks(cfg))
    if problems:
        raise ConfigError("; also ".join(problems))


def live_nodes() -> list[dict[str, float]]:
    """The resources of each live node of the connected Ray."""
    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def check_resources(cfg: FindRayConfig, started_here: bool) -> None:
    """The actors against the connected cluster's nodes: ConfigError on a Ray this driver
    started (`driver.connect` says so; no node will join), a warning per problem on a joined
    cluster (an autoscaler may add nodes)."""
    problems = cluster_problems(actor_asks(cfg), live_nodes())
    if problems and started_here:
        raise ConfigError("; also ".join(problems))
    for problem in problems:
        log.warning("%s (until an autoscaler adds a node that fits, they wait)", problem)
