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
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

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


def _task(config: ConfigRecord) -> Task:
    spec = json.loads(str(config["task"]))
    cls = task_class(spec["name"])
    settings = validate({"task": spec["settings"]}, {"task": cls.keys}, "server request")
    return cls(settings["task"])


def _model(task: Task, msg: Message, context: Context, keep_local_norm: bool):
    model = task.build_model()
    state = msg.content["arrays"].to_torch_state_dict()
    if keep_local_norm and LOCAL_NORM in context.state:
        state.update(context.state[LOCAL_NORM].to_torch_state_dict())
    model.load_state_dict(state)
    return model, state


def _hospital(msg: Message, context: Context) -> Hospital:
    return resolve_hospital(dict(context.node_config), dict(msg.content["config"]))


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
    hospital = _hospital(msg, context)
    return Message(RecordDict({"hospital": ConfigRecord({"name": hospital.name})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training from the global weights; reply with the new weights."""
    started = time.perf_counter()
    config = msg.content["config"]
    hospital = _hospital(msg, context)
    task = _task(config)
    settings = json.loads(str(config["train"]))
    seed_everything(settings["seed"] + int(config.get("server-round", 0)))
    keep_local_norm = bool(config.get("keep-local-norm", False))
    model, global_state = _model(task, msg, context, keep_local_norm)
    device = select_device(settings["device"])
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"],
                                 weight_decay=settings["weight_decay"])
    mu = float(config.get("proximal-mu", 0.0))
    penalty = proximal_penalty(model, global_state, mu) if mu > 0 else None
    batches = _loader(task, hospital, settings)
    steps = int(config["local-steps"]) or None
    losses, done = [], 0
    for _ in range(int(config["local-epochs"])):
        result = task.train_epoch(model, batches, optimizer, device,
                                  max_steps=None if steps is None else steps - done,
                                  penalty=penalty)
        losses.append(result["train_loss"])
        done += int(result["train_steps"])
        if steps is not None and done >= steps:
            break
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if keep_local_norm:
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
    config = msg.content["config"]
    hospital = _hospital(msg, context)
    task = _task(config)
    settings = json.loads(str(config["train"]))
    model, _ = _model(task, msg, context, bool(config.get("keep-local-norm", False)))
    device = select_device(settings["device"])
    rows = task.select(hospital.manifest().select(split="val"))
    evaluation = task.evaluate(model.to(device), rows, device)
    metrics = MetricRecord({**evaluation.metrics, "num-examples": len(rows),
                            "seconds": time.perf_counter() - started})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
