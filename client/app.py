"""The ClientApp: a hospital's node. The same code runs in simulation and deployment.

Each request carries the global weights and the round's config: the task and
its settings (JSON), the local training settings (JSON), the DP request
(JSON, ``tasks.privacy.PRIVACY_KEYS``), local epochs/steps, the run's number
of rounds, and strategy hints (``proximal-mu`` for FedProx,
``keep-local-norm`` for FedBN). The node trains or evaluates on its own
manifest only and replies with weights, ``num-examples`` (training samples or
evaluated images) and metrics.

Every train and evaluate request is checked against the node's policy (the
tasks its node config accepts) and written, with the reply's hash, to the
hospital's hash-chained audit log (``client.audit``) before the reply leaves.
When the server runs secure aggregation, training requests arrive through
Flower's SecAgg+ (``client.secure_aggregation``) and the reply leaves masked.

With DP, the node trains with patient-level DP-SGD (``tasks.privacy``),
records the round in its privacy ledger before replying, and refuses (an
error reply, no training) a round that would pass its own budget, or a
non-private round when it has a budget at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import nn

from client.audit import AuditLog, digest_arrays, digest_config
from client.hospital import Hospital, resolve_hospital
from client.ledger import BudgetExceeded, PrivacyLedger
from client.secure_aggregation import secure_aggregation
from tasks.config import validate
from tasks.contract import Task
from tasks.device import select_device
from tasks.model_state import norm_state_keys, proximal_penalty
from tasks.privacy import PRIVACY_KEYS, PrivateRound, Release, compatible, planned_noise
from tasks.protocol import KEEP_LOCAL_NORM, UNIFORM_WEIGHT
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
    privacy: dict[str, Any]
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
    privacy = validate({"privacy": json.loads(str(config.get("privacy", "{}")))},
                       {"privacy": PRIVACY_KEYS}, "server request")["privacy"]
    keep_local_norm = bool(config.get(KEEP_LOCAL_NORM, False))
    model = compatible(task.build_model()) if privacy["enabled"] else task.build_model()
    global_state = msg.content["arrays"].to_torch_state_dict()
    state = dict(global_state)
    if keep_local_norm and LOCAL_NORM in context.state:
        state.update(context.state[LOCAL_NORM].to_torch_state_dict())
    model.load_state_dict(state)
    device = select_device(train["device"])
    return Request(config, hospital, task, train, privacy, keep_local_norm, model.to(device),
                   global_state, device)


def _loader(task: Task, hospital: Hospital, train: dict[str, Any], per_patient: bool):
    """Training batches, prepared once per process for a hospital and task settings."""
    key = (str(hospital.manifest_path), json.dumps(task.settings, sort_keys=True),
           train["batch_size"], train["seed"], per_patient)
    if key not in _LOADERS:
        rows = hospital.manifest().select(split="train")
        _LOADERS[key] = task.train_data(rows, train["batch_size"], train["seed"], per_patient)
    return _LOADERS[key]


def _local_training(request: Request, model: nn.Module, batches: Any,
                    optimizer: torch.optim.Optimizer, penalty: Any) -> tuple[float, int]:
    """The round's local epochs (or steps); returns the last epoch's loss and the steps."""
    config = request.config
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
    return float(losses[-1]), done


def _refuse(msg: Message, reason: str) -> Message:
    """An error reply: the server logs the reason with the hospital's name and goes on."""
    return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, reason), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Say which hospital this node is."""
    hospital = resolve_hospital(dict(context.node_config), dict(msg.content["config"]))
    return Message(RecordDict({"hospital": ConfigRecord({"name": hospital.name})}),
                   reply_to=msg)


def _policy_problem(msg: Message, hospital: Hospital) -> str | None:
    """Why this node will not serve the request under its own policy (accepted tasks)."""
    name = json.loads(str(msg.content["config"]["task"]))["name"]
    if hospital.accepted_tasks is not None and name not in hospital.accepted_tasks:
        return (f"hospital {hospital.name} does not accept task '{name}' (its node config "
                f"accepts: {', '.join(hospital.accepted_tasks)})")
    return None


def _audited(handler: Callable[[Message, Context], Message]
             ) -> Callable[[Message, Context], Message]:
    """Serve a request under the node's policy, then write what arrived and what leaves to
    the hospital's audit log before the reply is sent."""

    @wraps(handler)
    def serve(msg: Message, context: Context) -> Message:
        hospital = resolve_hospital(dict(context.node_config), dict(msg.content["config"]))
        problem = _policy_problem(msg, hospital)
        reply = _refuse(msg, problem) if problem else handler(msg, context)
        config = msg.content["config"]
        event: dict[str, Any] = {
            "type": msg.metadata.message_type, "run": str(msg.metadata.run_id),
            "round": int(config.get("server-round", 0)),
            "task": json.loads(str(config["task"]))["name"],
            "config_sha256": digest_config(config),
            "global_model_sha256": _arrays_digest(msg.content["arrays"])}
        if reply.has_error():
            event["refused"] = reply.error.reason
        else:
            metrics = reply.content["metrics"]
            event["samples"] = int(metrics["num-examples"])
            if "arrays" in reply.content:
                event["update_sha256"] = _arrays_digest(reply.content["arrays"])
            for key in ("epsilon", "epsilon-total", "delta"):
                if key in metrics:
                    event[key] = float(metrics[key])
        AuditLog(hospital.folder).append(event)
        return reply

    return serve


def _arrays_digest(arrays: ArrayRecord) -> str:
    return digest_arrays({key: arrays[key].numpy() for key in arrays})


@app.train(mods=[secure_aggregation])
@_audited
def train(msg: Message, context: Context) -> Message:
    """Local training from the global weights (DP-SGD when asked); reply with the new weights."""
    started = time.perf_counter()
    request = unpack(msg, context)
    config, model, settings = request.config, request.model, request.train
    server_round = int(config.get("server-round", 0))
    seed_everything(settings["seed"] + server_round)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"],
                                 weight_decay=settings["weight_decay"])
    mu = float(config.get("proximal-mu", 0.0))
    penalty = proximal_penalty(model, request.global_state, mu) if mu > 0 else None
    private = request.privacy["enabled"]
    budget = request.hospital.budget
    if budget.max_epsilon is not None and not private:
        return _refuse(msg, f"hospital {request.hospital.name} trains only with differential "
                       f"privacy (max-epsilon {budget.max_epsilon:g}); the run asked for none")
    if len(request.task.select(request.hospital.manifest().select(split="train"))) == 0:
        return _refuse(msg, f"hospital {request.hospital.name} has no training images for "
                       f"task {request.task.name} (split 'train' of its manifest)")
    batches = _loader(request.task, request.hospital, settings, per_patient=private)
    extra: dict[str, float] = {}
    if private:
        try:
            model, extra = _private_round(msg, request, optimizer, batches, server_round)
        except BudgetExceeded as e:
            return _refuse(msg, f"hospital {request.hospital.name}: {e}")
        loss, done = extra.pop("loss"), int(extra.pop("steps"))
    else:
        loss, done = _local_training(request, model, batches, optimizer, penalty)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if request.keep_local_norm:
        local = {k: state[k] for k in norm_state_keys(model)}
        context.state[LOCAL_NORM] = ArrayRecord(local)
    metrics = MetricRecord({"num-examples": len(batches.dataset), UNIFORM_WEIGHT: 1.0,
                            "loss": loss, "steps": done,
                            "seconds": time.perf_counter() - started, **extra})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}),
                   reply_to=msg)


def _private_round(msg: Message, request: Request, optimizer: torch.optim.Optimizer,
                   batches: Any, server_round: int) -> tuple[nn.Module, dict[str, float]]:
    """One round of DP-SGD within the hospital's budget, recorded in its ledger before the
    reply leaves. Returns the plain trained model and the round's privacy metrics."""
    privacy, budget, config = request.privacy, request.hospital.budget, request.config
    delta = budget.delta
    rate = 1.0 / len(batches)
    steps = int(config["local-epochs"]) * len(batches)
    if int(config["local-steps"]):
        steps = min(steps, int(config["local-steps"]))
    noise = planned_noise(privacy, rate, steps * int(config.get("num-rounds", 1)), delta)
    with PrivacyLedger.locked(request.hospital.folder) as ledger:
        ledger.check(Release(noise, rate, steps), budget, privacy["accountant"])
        with PrivateRound(request.model, optimizer, batches, noise, privacy["max_grad_norm"],
                          privacy["grad_sample_mode"], max_steps=steps) as private:
            loss, done = _local_training(request, private.model, private.batches,
                                         private.optimizer, None)
        entry = ledger.record(str(msg.metadata.run_id), server_round, private.release,
                              privacy["max_grad_norm"], delta, privacy["accountant"])
    return private.plain, {
        "loss": loss, "steps": done, "epsilon": entry["epsilon_run"],
        "epsilon-total": entry["epsilon_total"], "delta": delta, "noise-multiplier": noise,
        "sample-rate": private.release.sample_rate}


@app.evaluate()
@_audited
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global weights (with local norms under FedBN) on the val patients."""
    started = time.perf_counter()
    request = unpack(msg, context)
    rows = request.task.select(request.hospital.manifest().select(split="val"))
    evaluation = request.task.evaluate(request.model, rows, request.device)
    metrics = MetricRecord({**evaluation.metrics, "num-examples": len(rows),
                            "seconds": time.perf_counter() - started})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
