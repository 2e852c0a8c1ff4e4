"""The ClientApp: a hospital's node. The same code runs in simulation and deployment.

Each request carries the global weights and the round's config: the task and
its settings (JSON), the local training settings (JSON), local epochs/steps,
and strategy hints (``proximal-mu`` for FedProx, ``keep-local-norm`` for
FedBN). The node trains or evaluates on its own manifest only and replies with
weights, ``num-examples`` (training samples or evaluated images) and metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from client.hospital import Hospital, resolve_hospital
from tasks.config import validate
from tasks.contract import Task
from tasks.device import select_device
from tasks.model_state import norm_state_keys, proximal_penalty
from tasks.registry import task_class
from tasks.training import seed_everything

app = ClientApp()

LOCAL_NORM = "local-norm"
_LOADERS: dict[tuple[str, str, int, int], Any] = {}


@dataclass
class Request:
    """A train or evaluate request, unpacked: the hospital, the task and the model to use."""

    config: ConfigRecord
    hospital: Hospital
    task: Task
    train: dict[str, Any]
    keep_local_norm: bool
    model: nn.Module
    global_state: dict[str, torch.Tensor]
    device: torch.device


def unpack(msg: Message, context: Context) -> Request:
    """The node's hospital, the requested task, and the global model (with this hospital's own
    normalisation layers under FedBN) on the node's device."""
    config = msg.content["config"]
    hospital = resolve_hospital(dict(context.node_config), dict(config))
    spec = json.loads(str(config["task"]))
    cls = task_class(spec["name"])
    task = cls(validate({"task": spec["settings"]}, {"task": cls.keys}, "server request")["task"])
    train = json.loads(str(config["train"]))
    keep_local_norm = bool(config.get("keep-local-norm", False))
    model = task.build_model()
    global_state = msg.content["arrays"].to_torch_state_dict()
    state = dict(global_state)
    if keep_local_norm and LOCAL_NORM in context.state:
        state.update(context.state[LOCAL_NORM].to_torch_state_dict())
    model.load_state_dict(state)
    device = select_device(train["device"])
    return Request(config, hospital, task, train, keep_local_norm, model.to(device),
                   global_state, device)


def _loader(task: Task, hospital: Hospital, train: dict[str, Any]):
    """Training batches, prepared once per process for a hospital and task settings."""
    key = (str(hospital.manifest_path), json.dumps(task.settings, sort_keys=True),
           train["batch_size"], train["seed"])
    if key not in _LOADERS:
        rows = hospital.manifest().select(split="train")
        _LOADERS[key] = task.train_data(rows, train["batch_size"], train["seed"])
    return _LOADERS[key]


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Say which hospital this node is."""
    hospital = resolve_hospital(dict(context.node_config), dict(msg.content["config"]))
    return Message(RecordDict({"hospital": ConfigRecord({"name": hospital.name})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training from the global weights; reply with the new weights."""
    started = time.perf_counter()
    request = unpack(msg, context)
    config, model, settings = request.config, request.model, request.train
    seed_everything(settings["seed"] + int(config.get("server-round", 0)))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"],
                                 weight_decay=settings["weight_decay"])
    mu = float(config.get("proximal-mu", 0.0))
    penalty = proximal_penalty(model, request.global_state, mu) if mu > 0 else None
    batches = _loader(request.task, request.hospital, settings)
    steps = int(config["local-steps"]) or None
    losses, done = [], 0
    for _ in range(int(config["local-epochs"])):
        result = request.task.train_epoch(model, batches, optimizer, request.device,
                                          max_steps=None if steps is None else steps - done,
                                          penalty=penalty)
        losses.append(result["train_loss"])
        done += int(result["train_steps"])
        if steps is not None and done >= steps:
            break
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if request.keep_local_norm:
        local = {k: state[k] for k in norm_state_keys(model)}
        context.state[LOCAL_NORM] = ArrayRecord(local)
    metrics = MetricRecord({"num-examples": len(batches.dataset), "loss": float(losses[-1]),
                            "steps": done, "seconds": time.perf_counter() - started})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global weights (with local norms under FedBN) on the val patients."""
    started = time.perf_counter()
    request = unpack(msg, context)
    rows = request.task.select(request.hospital.manifest().select(split="val"))
    evaluation = request.task.evaluate(request.model, rows, request.device)
    metrics = MetricRecord({**evaluation.metrics, "num-examples": len(rows),
                            "seconds": time.perf_counter() - started})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
