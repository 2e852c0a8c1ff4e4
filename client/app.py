"""The ClientApp: a hospital's node. The same code runs in simulation and deployment.

Each request carries the global weights and the round's config: the task and
its settings (JSON), the local training settings a hospital honours (JSON,
``tasks.run_config.LOCAL_TRAIN_KEYS``), the DP request (JSON,
``tasks.run_config.PRIVACY_KEYS``), local epochs/steps, the run's number of
rounds, and strategy hints (``proximal-mu`` for FedProx, ``keep-local-norm``
for FedBN). The node trains (through the one local trainer,
``client.trainer``, whose learning-rate schedule spans the run's rounds) or
evaluates on its own manifest only, on the device its own node config names,
and replies with weights, ``num-examples`` (training samples or evaluated
images) and metrics.

Every train and evaluate request is checked against the node's policy (the
tasks its node config accepts; how many evaluations it answers at most) and
written, with the reply's hash and the hash of the run's app bundle, to the
hospital's MAC-chained audit log (``client.audit``) before the reply leaves; a
node whose audit log is broken or missing serves nothing. In deployment this
code is the hospital's installed copy, run by ``client.launcher`` for approved
bundles only.
When the server runs secure aggregation, training requests arrive through
Flower's SecAgg+ (``client.secure_aggregation``) and the reply leaves masked.

With DP, the node trains with patient-level DP-SGD (``client.privacy``),
records the round in its privacy ledger before replying, and refuses (an
error reply, no training) a round that would pass its own budget, a
non-private round when it has a budget at all, and any DP round while its
ledger holds fewer rounds than its audit log records (a deleted or replaced
ledger never restarts from zero). A DP round's reply carries only what the
accountant covers or what is public about the run (weights, epsilon,
sample counts and steps); the training loss is not sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from importlib.metadata import version
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from client.audit import AuditBroken, AuditLog, digest_arrays, digest_config
from client.hospital import Hospital, resolve_hospital
from client.launcher import BUNDLE_KEY
from client.ledger import PrivacyLedger, PrivacyRefusal
from client.model_state import norm_state_keys, proximal_penalty
from client.privacy import Release, planned_noise
from client.secure_aggregation import secure_aggregation
from client.trainer import DPSettings, Fit, LocalTrainer
from tasks.config import ConfigError, validate
from tasks.contract import PatientDraws, Task
from tasks.device import select_device
from tasks.errors import UserError
from tasks.evaluation import evaluate as evaluate_task
from tasks.protocol import KEEP_LOCAL_NORM, UNIFORM_WEIGHT
from tasks.registry import task_class
from tasks.run_config import LOCAL_TRAIN_KEYS, PRIVACY_KEYS, check_privacy, patient_draws

app = ClientApp()
SPINEFL_VERSION = version("spinefl")

LOCAL_NORM = "local-norm"
_LOADERS: dict[tuple[str, str, int, int, bool], Any] = {}


@dataclass
class Request:
    """A request, unpacked once: the hospital serving it, the task and the settings asked."""

    config: ConfigRecord
    hospital: Hospital
    task_name: str
    task_settings: dict[str, Any]

    @classmethod
    def of(cls, msg: Message, context: Context) -> Request:
        config = msg.content["config"]
        spec = json.loads(str(config["task"]))
        return cls(config, resolve_hospital(dict(context.node_config), dict(config)),
                   spec["name"], spec["settings"])

    @property
    def server_round(self) -> int:
        return int(self.config.get("server-round", 0))

    @property
    def keep_local_norm(self) -> bool:
        """FedBN: the hospital keeps its own normalisation layers."""
        return bool(self.config.get(KEEP_LOCAL_NORM, False))

    def task(self) -> Task:
        cls = task_class(self.task_name)
        return cls(validate({"task": self.task_settings}, {"task": cls.keys},
                            "server request")["task"])

    def section(self, name: str, keys: tuple) -> dict[str, Any]:
        """A JSON section of the request, validated against ``keys``."""
        return validate({name: json.loads(str(self.config.get(name, "{}")))}, {name: keys},
                        "server request")[name]

    def policy_problem(self, message_type: str, log: AuditLog) -> str | None:
        """Why this node will not serve the request under its own policy: its audit log is
        broken, the task is not accepted, or it answered its last evaluation."""
        hospital = self.hospital
        broken = log.verify()
        if broken:
            return (f"hospital {hospital.name} serves nothing while its audit log is broken "
                    f"({broken})")
        accepted = hospital.accepted_tasks
        if accepted is not None and self.task_name not in accepted:
            return (f"hospital {hospital.name} does not accept task '{self.task_name}' "
                    f"(its node config accepts: {', '.join(accepted)})")
        limit = hospital.max_evaluations
        if message_type == MessageType.EVALUATE and limit is not None and \
                len(log.served(MessageType.EVALUATE)) >= limit:
            return (f"hospital {hospital.name} has answered its {limit} evaluation(s) "
                    "(max-evaluations in its node config); evaluation refused")
        return None


def starting_state(incoming: dict[str, torch.Tensor], context: Context, request: Request
                   ) -> dict[str, torch.Tensor]:
    """The global model's state, with this hospital's own normalisation layers under FedBN."""
    if request.keep_local_norm and LOCAL_NORM in context.state:
        return {**incoming, **context.state[LOCAL_NORM].to_torch_state_dict()}
    return incoming


def _loader(task: Task, hospital: Hospital, train: dict[str, Any],
            per_patient: PatientDraws | None):
    """Training batches, prepared once per process for a hospital and task settings."""
    key = (str(hospital.manifest_path), json.dumps(task.settings, sort_keys=True),
           train["batch_size"], train["seed"], per_patient)
    if key not in _LOADERS:
        rows = hospital.manifest().select(split="train")
        _LOADERS[key] = task.train_data(rows, train["batch_size"], train["seed"], per_patient)
    return _LOADERS[key]


def _refuse(msg: Message, reason: str) -> Message:
    """An error reply: the server logs the reason with the hospital's name and goes on."""
    return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, reason), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Say which hospital this node is."""
    hospital = resolve_hospital(dict(context.node_config), dict(msg.content["config"]))
    return Message(RecordDict({"hospital": ConfigRecord({"name": hospital.name})}),
                   reply_to=msg)


Handler = Callable[[Message, Context, Request], Message]


def _audited(handler: Handler) -> Callable[[Message, Context], Message]:
    """Serve a request under the node's policy, then write what arrived and what leaves to
    the hospital's audit log before the reply is sent."""

    @wraps(handler)
    def serve(msg: Message, context: Context) -> Message:
        request = Request.of(msg, context)
        log = AuditLog(request.hospital.folder)
        problem = request.policy_problem(msg.metadata.message_type, log)
        reply = _refuse(msg, problem) if problem else handler(msg, context, request)
        event: dict[str, Any] = {
            "type": msg.metadata.message_type, "run": str(msg.metadata.run_id),
            "round": request.server_round, "task": request.task_name,
            "config_sha256": digest_config(request.config),
            "global_model_sha256": _arrays_digest(msg.content["arrays"]),
            "spinefl": SPINEFL_VERSION}
        if BUNDLE_KEY in context.node_config:  # set by the launcher (not in simulation)
            event["bundle_sha256"] = str(context.node_config[BUNDLE_KEY])
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
        try:
            log.append(event)
        except AuditBroken as e:  # nothing leaves that the log does not hold
            return _refuse(msg, f"hospital {request.hospital.name}: {e}")
        return reply

    return serve


def _arrays_digest(arrays: ArrayRecord) -> str:
    return digest_arrays({key: arrays[key].numpy() for key in arrays})


@app.train(mods=[secure_aggregation])
@_audited
def train(msg: Message, context: Context, request: Request) -> Message:
    """Local training from the global weights (DP-SGD when asked); reply with the new weights."""
    started = time.perf_counter()
    hospital, config = request.hospital, request.config
    task = request.task()
    settings = request.section("train", LOCAL_TRAIN_KEYS)
    privacy = request.section("privacy", PRIVACY_KEYS)
    private = privacy["enabled"]
    try:
        check_privacy({"task": {"name": task.name}, "privacy": privacy}, "server request")
    except ConfigError as e:
        return _refuse(msg, f"hospital {hospital.name}: {e}")
    if hospital.budget.max_epsilon is not None and not private:
        return _refuse(msg, f"hospital {hospital.name} trains only with differential "
                       f"privacy (max-epsilon {hospital.budget.max_epsilon:g}); the run asked "
                       "for none")
    if len(task.select(hospital.manifest().select(split="train"))) == 0:
        return _refuse(msg, f"hospital {hospital.name} has no training images for "
                       f"task {task.name} (split 'train' of its manifest)")
    incoming = msg.content["arrays"].to_torch_state_dict()
    local_epochs, local_steps = int(config["local-epochs"]), int(config["local-steps"])
    trainer = LocalTrainer.start(
        task, settings, select_device(hospital.device),
        seed=settings["seed"] + request.server_round,
        state=starting_state(incoming, context, request),
        run_epochs=int(config.get("num-rounds", 1)) * local_epochs,
        epochs_done=max(request.server_round - 1, 0) * local_epochs)
    model = trainer.model
    mu = float(config.get("proximal-mu", 0.0))
    penalty = proximal_penalty(model, incoming, mu) if mu > 0 else None
    batches = _loader(task, hospital, settings, per_patient=patient_draws(privacy))
    extra: dict[str, float] = {}
    if private:
        try:
            fit, extra = _private_round(msg, request, trainer, batches, privacy, task)
        except (PrivacyRefusal, UserError) as e:  # UserError: an unreadable ledger
            return _refuse(msg, f"hospital {hospital.name}: {e}")
    else:
        fit = trainer.fit(batches, local_epochs, max_steps=local_steps or None, penalty=penalty)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if request.keep_local_norm:
        context.state[LOCAL_NORM] = ArrayRecord({k: state[k] for k in norm_state_keys(model)})
    # With DP, the loss (computed on the hospital's data, not covered by the accountant)
    # stays at the hospital.
    loss = {} if private else {"loss": fit.loss}
    metrics = MetricRecord({"num-examples": len(batches.dataset), UNIFORM_WEIGHT: 1.0,
                            **loss, "steps": fit.steps,
                            "lr": fit.epochs[-1]["lr"] if fit.epochs else settings["lr"],
                            "seconds": time.perf_counter() - started, **extra})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}),
                   reply_to=msg)


def _private_round(msg: Message, request: Request, trainer: LocalTrainer, batches: Any,
                   privacy: dict[str, Any], task: Task) -> tuple[Fit, dict[str, float]]:
    """One round of DP-SGD within the hospital's budget, recorded in its ledger before the
    reply leaves. Returns what the trainer did and the round's privacy metrics."""
    budget, config = request.hospital.budget, request.config
    delta = budget.delta
    rate = 1.0 / len(batches)
    steps = int(config["local-epochs"]) * len(batches)
    if int(config["local-steps"]):
        steps = min(steps, int(config["local-steps"]))
    noise = planned_noise(privacy, rate, steps * int(config.get("num-rounds", 1)), delta)
    dp = DPSettings.of(privacy, task, noise, delta)
    with PrivacyLedger.locked(request.hospital.folder) as ledger:
        ledger.check_against(AuditLog(request.hospital.folder))
        ledger.check(Release(noise, rate, steps), budget, privacy["accountant"])
        fit = trainer.fit(batches, int(config["local-epochs"]), max_steps=steps, dp=dp)
        assert fit.release is not None
        entry = ledger.record(str(msg.metadata.run_id), request.server_round, fit.release,
                              privacy["max_grad_norm"], delta, privacy["accountant"])
    return fit, {"epsilon": entry["epsilon_run"], "epsilon-total": entry["epsilon_total"],
                 "delta": delta, "noise-multiplier": noise,
                 "sample-rate": fit.release.sample_rate}


@app.evaluate()
@_audited
def evaluate(msg: Message, context: Context, request: Request) -> Message:
    """Evaluate the global weights (with local norms under FedBN) on the val patients."""
    started = time.perf_counter()
    task = request.task()
    device = select_device(request.hospital.device)
    model = task.build_model()
    model.load_state_dict(starting_state(msg.content["arrays"].to_torch_state_dict(), context,
                                         request))
    model.to(device)
    rows = task.select(request.hospital.manifest().select(split="val"))
    evaluation = evaluate_task(task, model, rows, device)
    metrics = MetricRecord({**evaluation.metrics, "num-examples": len(rows),
                            "seconds": time.perf_counter() - started})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
