"""The work of a round at a hospital: local training (DP-SGD when asked) and evaluation.

Imported by the ClientApp (``client.app``) only for requests it serves and that train or
evaluate; the checks before (policy, audit log) need none of this. With DP, the node
trains with patient-level DP-SGD (``client.privacy``), records the round in its privacy
ledger before replying, and refuses (an error reply, no training) a round that would pass
its own budget, a non-private round when it has a budget at all, and any DP round while
its ledger holds fewer rounds than its audit log records. A DP round's reply carries only
what the accountant covers or what is public about the run (weights, epsilon, sample
counts and steps); the training loss is not sent.

A train request may ask the node to validate the incoming global model first (one message a
round then carries the previous round's validation and this round's training): the reply's
metrics add the validation's, prefixed ``global-val-``. A validation releases what an
evaluation does (metrics on the val patients, never trained on, so outside the DP
accountant) and counts against the node's ``max-evaluations`` in the same way.

Personalisation (``client.personal``): under Ditto a train request also trains the
hospital's personal model and validates it (``personal-val-``); under ``finetune`` the
evaluation after the last round fine-tunes the global model and keeps the better of the two
on the val patients; under FedBN without either, that evaluation keeps the global model with
the hospital's own normalisation. Under DP no personal metric is sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from client.audit import AuditLog
from client.hospital import Hospital
from client.ledger import PrivacyLedger, PrivacyRefusal
from client.model_state import norm_state_keys, proximal_penalty
from client.personal import keeps_tuned, load_personal, personal_model_path, save_personal
from client.privacy import Release, planned_noise
from client.requests import Request, refuse
from client.trainer import DPSettings, Fit, LocalTrainer
from tasks.blocks.cache import PreparedCache
from tasks.config import ConfigError
from tasks.contract import PatientDraws, Task
from tasks.device import select_device
from tasks.errors import UserError
from tasks.evaluation import evaluate as evaluate_task
from tasks.packing import PRECISIONS, pack_reply, unpack
from tasks.protocol import (
    FEDERATION_ID,
    GLOBAL_VAL,
    PERSONAL_VAL,
    UNIFORM_WEIGHT,
    UPDATE_PRECISION,
)
from tasks.run_config import (
    LOCAL_TRAIN_KEYS,
    PERSONAL_KEYS,
    PRIVACY_KEYS,
    check_privacy,
    patient_draws,
)

LOCAL_NORM = "local-norm"


def starting_state(incoming: dict[str, torch.Tensor], context: Context, request: Request
                   ) -> dict[str, torch.Tensor]:
    """The global model's state, with this hospital's own normalisation layers under FedBN."""
    if request.keep_local_norm and LOCAL_NORM in context.state:
        return {**incoming, **context.state[LOCAL_NORM].to_torch_state_dict()}
    return incoming


def _loader(task: Task, hospital: Hospital, train: dict[str, Any],
            per_patient: PatientDraws | None, server_round: int):
    """This round's training batches, shuffled and augmented from the run's seed plus
    ``server_round``: a round draws the same batches wherever and however often it runs (a
    simulation's Ray actor serving many hospitals in turn, a deployed node's new process),
    and each round draws others. Nothing is kept in memory between rounds (a simulation's
    memory stays flat however many hospitals an actor serves); the prepared rows come from
    the hospital's on-disk cache."""
    rows = hospital.manifest().select(split="train")
    cache = PreparedCache(hospital.prepared_folder)
    batches = task.train_data(rows, train["batch_size"], train["seed"] + server_round,
                              per_patient, cache)
    cache.prune()
    return batches


def _has_training_images(task: Task, hospital: Hospital) -> bool:
    return len(task.select(hospital.manifest().select(split="train"))) > 0


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
        return refuse(msg, f"hospital {hospital.name}: {e}")
    precision = str(config.get(UPDATE_PRECISION, "float32"))
    if precision not in PRECISIONS:
        return refuse(msg, f"hospital {hospital.name}: update precision '{precision}' is "
                      f"not one of {', '.join(PRECISIONS)}")
    if hospital.budget.max_epsilon is not None and not private:
        return refuse(msg, f"hospital {hospital.name} trains only with differential "
                       f"privacy (max-epsilon {hospital.budget.max_epsilon:g}); the run asked "
                       "for none")
    try:  # before any training: a refusal must spend no privacy budget
        plan = PersonalPlan.of(task, request)
    except (ConfigError, UserError) as e:
        return refuse(msg, f"hospital {hospital.name}: {e}")
    if not _has_training_images(task, hospital):
        return refuse(msg, f"hospital {hospital.name} has no training images for "
                       f"task {task.name} (split 'train' of its manifest)")
    received = task.build_model()  # the packed weights' layout; the model validated
    incoming = unpack(msg.content["arrays"], received.state_dict())
    start = starting_state(incoming, context, request)
    validation = {}
    if request.validates:
        validation = {GLOBAL_VAL + key: value for key, value in
                      _validation(task, received, start, request).items()}
        started = time.perf_counter()
    local_epochs, local_steps = int(config["local-epochs"]), int(config["local-steps"])
    trainer = LocalTrainer.start(
        task, settings, select_device(hospital.device),
        seed=settings["seed"] + request.server_round, state=start,
        run_epochs=int(config.get("num-rounds", 1)) * local_epochs,
        epochs_done=max(request.server_round - 1, 0) * local_epochs)
    model = trainer.model
    mu = float(config.get("proximal-mu", 0.0))
    penalty = proximal_penalty(model, incoming, mu) if mu > 0 else None
    batches = _loader(task, hospital, settings, patient_draws(privacy),
                      request.server_round)
    extra: dict[str, float] = {}
    if private:
        try:
            fit, extra = _private_round(msg, request, trainer, batches, privacy, task)
        except (PrivacyRefusal, UserError) as e:  # UserError: an unreadable ledger
            return refuse(msg, f"hospital {hospital.name}: {e}")
    else:
        fit = trainer.fit(batches, local_epochs, max_steps=local_steps or None, penalty=penalty)
    seconds = time.perf_counter() - started  # the global model's training (and DP's ledger)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if request.keep_local_norm:
        context.state[LOCAL_NORM] = ArrayRecord({k: state[k] for k in norm_state_keys(model)})
    if plan.method == "ditto":
        try:
            extra.update(_ditto(task, request, settings, start, plan))
        except UserError as e:  # a full disk
            return refuse(msg, f"hospital {hospital.name}: {e}")
    # With DP, the loss (computed on the hospital's data, not covered by the accountant)
    # stays at the hospital.
    loss = {} if private else {"loss": fit.loss}
    arrays = pack_reply(state, msg.content["arrays"], precision)
    metrics = MetricRecord({"num-examples": len(batches.dataset), UNIFORM_WEIGHT: 1.0,
                            **loss, "steps": fit.steps,
                            "lr": fit.epochs[-1]["lr"] if fit.epochs else settings["lr"],
                            "seconds": seconds,
                            "update-bytes": sum(len(a.data) for a in arrays.values()),
                            **extra, **validation})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


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


@dataclass(frozen=True)
class PersonalPlan:
    """What the run asks the hospital to keep of its own (``method``: ``none``, ``ditto``,
    ``finetune``; ``pull``: Ditto's lambda; ``epochs`` of personal training), where
    (``path``; None: the server named no run), the stored personal model and the round it
    was stored in, and whether nothing computed from it may leave (``withheld``: a DP run,
    or a hospital that trains only with DP). Made before any training, so that a request
    the node cannot serve is refused before it spends anything."""

    method: str
    pull: float
    epochs: int
    path: Path | None
    stored: dict[str, torch.Tensor] | None
    stored_round: int
    withheld: bool

    @classmethod
    def of(cls, task: Task, request: Request) -> PersonalPlan:
        settings = request.section("personal", PERSONAL_KEYS)
        identity = str(request.config.get(FEDERATION_ID, ""))
        path = personal_model_path(request.hospital.folder, identity) if identity else None
        ditto = settings["personalisation"] == "ditto"
        found = load_personal(path, task) if path is not None and ditto else None
        return cls(settings["personalisation"], settings["personal_lambda"],
                   settings["personal_epochs"], path, found[0] if found else None,
                   found[1] if found else 0, request.personal_withheld)


def _ditto(task: Task, request: Request, settings: dict[str, Any],
           start: dict[str, torch.Tensor], plan: PersonalPlan) -> dict[str, float]:
    """Ditto's personal step: the stored personal model (else the global one) trained on the
    hospital's data with the pull toward ``start``, this round's global model (with the
    hospital's own normalisation under FedBN), stored again and validated (not where
    ``plan.withheld``, nor over the node's evaluation limit). A round the personal model
    already took (a resumed run repeating a round the coordinator did not finish) is not
    taken twice."""
    started = time.perf_counter()
    if plan.path is None:
        return {}
    config = request.config
    trainer = LocalTrainer.start(
        task, settings, select_device(request.hospital.device),
        seed=settings["seed"] + request.server_round,
        state=start if plan.stored is None else plan.stored,
        run_epochs=int(config.get("num-rounds", 1)) * plan.epochs,
        epochs_done=max(request.server_round - 1, 0) * plan.epochs)
    steps = 0
    if plan.stored is None or plan.stored_round < request.server_round:
        penalty = proximal_penalty(trainer.model, start, plan.pull) if plan.pull > 0 else None
        batches = _loader(task, request.hospital, settings, None, request.server_round)
        steps = trainer.fit(batches, plan.epochs, max_steps=int(config["local-steps"]) or None,
                            penalty=penalty).steps
        save_personal(plan.path, task, trainer.model, round=request.server_round,
                      personalisation="ditto")
    if plan.withheld:
        return {}
    metrics = {"personal-seconds": time.perf_counter() - started, "personal-steps": steps}
    if request.validation_refused is None:
        validation = _validation(task, trainer.model, trainer.model.state_dict(), request)
        metrics.update({PERSONAL_VAL + key: value for key, value in validation.items()})
    return metrics


def _finetuned(task: Task, request: Request, plan: PersonalPlan, model: torch.nn.Module,
               state: dict[str, torch.Tensor], validation: dict[str, float]
               ) -> tuple[torch.nn.Module, dict[str, float], int]:
    """The global model (``model``, holding ``state``, validated as ``validation``)
    fine-tuned on the hospital's training patients, or the global model itself where the
    fine-tuned one does not score higher on the val patients (or there is nothing to
    fine-tune on); with the kept model's validation and the steps taken."""
    settings = request.section("train", LOCAL_TRAIN_KEYS)
    if not _has_training_images(task, request.hospital):
        return model, {**validation, "kept-fine-tuned": 0.0}, 0
    trainer = LocalTrainer.start(task, settings, select_device(request.hospital.device),
                                 seed=settings["seed"] + request.server_round, state=state,
                                 run_epochs=plan.epochs)
    batches = _loader(task, request.hospital, settings, None, request.server_round)
    steps = trainer.fit(batches, plan.epochs,
                        max_steps=int(request.config["local-steps"]) or None).steps
    tuned = _validation(task, trainer.model, trainer.model.state_dict(), request)
    if keeps_tuned(task, validation, tuned):
        return trainer.model, {**tuned, "kept-fine-tuned": 1.0}, steps
    return model, {**validation, "kept-fine-tuned": 0.0}, steps


def _keep_personal(task: Task, request: Request, plan: PersonalPlan, model: torch.nn.Module,
                   state: dict[str, torch.Tensor], validation: dict[str, float]
                   ) -> dict[str, float]:
    """After the last round: store the hospital's own model of the run, the gated
    fine-tuning's (``finetune``) or the global model with its own normalisation (FedBN);
    the metrics to send of it (none where ``plan.withheld``)."""
    started = time.perf_counter()
    last = request.server_round >= int(request.config.get("num-rounds", 1))
    method = plan.method
    if plan.path is None or not last or method == "ditto" or \
            (method == "none" and not request.keep_local_norm):
        return {}
    metrics: dict[str, float] = {}
    steps = 0
    if method == "finetune":
        kept, metrics, steps = _finetuned(task, request, plan, model, state, validation)
    else:  # the validated global model, with the hospital's own normalisation
        kept, method = model, "fedbn"
    save_personal(plan.path, task, kept, round=request.server_round, personalisation=method)
    if plan.withheld or not metrics:
        return {}
    return {"personal-seconds": time.perf_counter() - started, "personal-steps": steps,
            **{PERSONAL_VAL + key: value for key, value in metrics.items()}}


def evaluate(msg: Message, context: Context, request: Request) -> Message:
    """Evaluate the global weights (with local norms under FedBN) on the val patients; keep
    the hospital's own model where the run personalises."""
    task = request.task()
    try:
        plan = PersonalPlan.of(task, request)
    except (ConfigError, UserError) as e:
        return refuse(msg, f"hospital {request.hospital.name}: {e}")
    model = task.build_model()
    incoming = unpack(msg.content["arrays"], model.state_dict())
    state = starting_state(incoming, context, request)
    metrics = _validation(task, model, state, request)
    try:
        metrics.update(_keep_personal(task, request, plan, model, state, metrics))
    except UserError as e:  # a full disk
        return refuse(msg, f"hospital {request.hospital.name}: {e}")
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _validation(task: Task, model: torch.nn.Module, state: dict[str, torch.Tensor],
                request: Request) -> dict[str, float]:
    """``task``'s metrics of ``model`` holding ``state`` on the hospital's val patients, with
    their number (``num-examples``) and the seconds it took."""
    started = time.perf_counter()
    device = select_device(request.hospital.device)
    model.load_state_dict(state)
    model.to(device)
    rows = task.select(request.hospital.manifest().select(split="val"))
    evaluation = evaluate_task(task, model, rows, device)
    return {**evaluation.metrics, "num-examples": len(rows),
            "seconds": time.perf_counter() - started}
