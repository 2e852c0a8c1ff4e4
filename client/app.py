"""The ClientApp: a hospital's node. The same code runs in simulation and deployment.

Each request carries the global weights and the round's config: the task and
its settings (JSON), the local training settings a hospital honours (JSON,
``tasks.run_config.LOCAL_TRAIN_KEYS``), the DP request (JSON,
``tasks.run_config.PRIVACY_KEYS``), local epochs/steps, the run's number of
rounds, and strategy hints (``proximal-mu`` for FedProx, ``keep-local-norm``
for FedBN; ``validate-global``: validate the incoming global model before
training; ``personal`` and ``federation-id``: what the hospital keeps of its own,
``client.personal``). The node trains (through the one local trainer,
``client.trainer``, whose learning-rate schedule spans the run's rounds) or
evaluates on its own manifest only, on the device its own node config names,
and replies with weights, ``num-examples`` (training samples or evaluated
images) and metrics.

Every train and evaluate request is checked against the node's policy (the
tasks its node config accepts; how many evaluations it answers at most, a train
request's validation of the global model counting as one) and
written, with the reply's hash and the hash of the run's app bundle, to the
hospital's MAC-chained audit log (``client.audit``) before the reply leaves; a
node whose audit log is broken or missing serves nothing. In deployment this
code is the hospital's installed copy, run by ``client.runtime_request`` for approved
bundles only.
When the server runs secure aggregation, training requests arrive through
Flower's SecAgg+ (``client.secure_aggregation``) and the reply leaves masked.

The work of a round (training, DP-SGD and the privacy ledger, evaluation) is in
``client.rounds``, imported only for requests that are served and train or
evaluate: the rest (a name query, SecAgg+'s key exchange, a refusal) runs
without torch or MONAI, in a fraction of the time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from importlib.metadata import version
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from client.approvals import BUNDLE_KEY
from client.audit import AuditBroken, AuditLog, digest_arrays, digest_config, message_kind
from client.hospital import resolve_hospital
from client.requests import Request, refuse
from client.secure_aggregation import secure_aggregation
from tasks.protocol import GLOBAL_VAL, PERSONAL_VAL

app = ClientApp()
SPINEFL_VERSION = version("spinefl")


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Say which hospital this node is (nothing while its audit log is broken)."""
    hospital = resolve_hospital(dict(context.node_config), dict(msg.content["config"]))
    broken = AuditLog(hospital.folder).verify()
    if broken:
        return refuse(msg, f"hospital {hospital.name} serves nothing while its audit log is "
                      f"broken ({broken})")
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
        reply = refuse(msg, problem) if problem else handler(msg, context, request)
        event: dict[str, Any] = {
            "type": msg.metadata.message_type, "run": str(msg.metadata.run_id),
            "round": request.server_round, "task": request.task_name,
            "config_sha256": digest_config(request.config),
            "global_model_sha256": _arrays_digest(msg.content["arrays"]),
            "spinefl": SPINEFL_VERSION}
        if BUNDLE_KEY in context.node_config:  # set by the launcher (not in simulation)
            event["bundle_sha256"] = str(context.node_config[BUNDLE_KEY])
        if request.validation_refused:
            event["validation_refused"] = request.validation_refused
        if reply.has_error():
            event["refused"] = reply.error.reason
        else:
            metrics = reply.content["metrics"]
            event["samples"] = int(metrics["num-examples"])
            # Validations released: the global model's (an evaluation, or a train request's
            # first) and a personal model's; each counts against max-evaluations.
            validations = sum(any(key.startswith(prefix) for key in metrics)
                              for prefix in (GLOBAL_VAL, PERSONAL_VAL))
            if message_kind(msg.metadata.message_type) == MessageType.EVALUATE:
                validations += 1
            if validations:
                event["validations"] = validations
            if any(key.startswith((GLOBAL_VAL, PERSONAL_VAL)) for key in metrics):
                event["validated"] = True
            if "arrays" in reply.content:
                event["update_sha256"] = _arrays_digest(reply.content["arrays"])
            for key in ("epsilon", "epsilon-total", "delta"):
                if key in metrics:
                    event[key] = float(metrics[key])
        try:
            log.append(event)
        except AuditBroken as e:  # nothing leaves that the log does not hold
            return refuse(msg, f"hospital {request.hospital.name}: {e}")
        return reply

    return serve


def _arrays_digest(arrays: ArrayRecord) -> str:
    return digest_arrays({key: arrays[key].numpy() for key in arrays})


@app.train(mods=[secure_aggregation])
@_audited
def train(msg: Message, context: Context, request: Request) -> Message:
    """Local training from the global weights (DP-SGD when asked); reply with the new weights."""
    from client import rounds  # torch, MONAI, the task: only for requests that train

    return rounds.train(msg, context, request)


@app.evaluate()
@_audited
def evaluate(msg: Message, context: Context, request: Request) -> Message:
    """Evaluate the global weights (with local norms under FedBN) on the val patients; after
    the last round, keep the hospital's own model where the run personalises."""
    from client import rounds

    return rounds.evaluate(msg, context, request)
