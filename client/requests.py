"""A request to a hospital's node, unpacked once, and the node's policy on it.

Light on purpose (no torch, no MONAI, no task code): the ClientApp decides with it
whether to serve a request before anything heavy is imported, so a request that trains
nothing (a SecAgg+ key exchange, a name query, a refusal) costs its process little.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Error, Message, MessageType
from flwr.common.constant import ErrorCode

from client.audit import AuditLog, message_kind
from client.hospital import Hospital, resolve_hospital
from tasks.config import validate
from tasks.protocol import KEEP_LOCAL_NORM, VALIDATE_GLOBAL

if TYPE_CHECKING:
    from tasks.contract import Task


@dataclass
class Request:
    """A request, unpacked once: the hospital serving it, the task and the settings asked
    (``validation_refused``: why the node will not validate the global model first, though
    the train request asks it to)."""

    config: ConfigRecord
    hospital: Hospital
    task_name: str
    task_settings: dict[str, Any]
    validation_refused: str | None = None

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

    def _raw(self, name: str) -> dict[str, Any]:
        """A JSON section of the request as sent, unvalidated ({} where it is not an
        object: it is refused, naming the key, where it is validated)."""
        try:
            section = json.loads(str(self.config.get(name, "{}")))
        except ValueError:
            return {}
        return section if isinstance(section, dict) else {}

    @property
    def personalisation(self) -> str:
        """What the run asks the hospital to keep of its own (``tasks.run_config.
        PERSONAL_KEYS``; read here without them, validated where it is used)."""
        return str(self._raw("personal").get("personalisation", "none"))

    @property
    def personal_withheld(self) -> bool:
        """Whether nothing computed from a personal model (trained without DP noise) may
        leave: the run asks for DP, or the hospital trains only with it (a budget)."""
        return bool(self._raw("privacy").get("enabled", False)) or \
            self.hospital.budget.max_epsilon is not None

    @property
    def validates(self) -> bool:
        """A train request that validates the incoming global model first."""
        return bool(self.config.get(VALIDATE_GLOBAL, False)) and self.validation_refused is None

    def task(self) -> Task:
        from tasks.registry import task_class  # torch and MONAI: only when a task runs

        cls = task_class(self.task_name)
        return cls(validate({"task": self.task_settings}, {"task": cls.keys},
                            "server request")["task"])

    def section(self, name: str, keys: tuple) -> dict[str, Any]:
        """A JSON section of the request, validated against ``keys``."""
        return validate({name: json.loads(str(self.config.get(name, "{}")))}, {name: keys},
                        "server request")[name]

    def policy_problem(self, message_type: str, log: AuditLog) -> str | None:
        """Why this node will not serve the request under its own policy: its audit log is
        broken, the task is not accepted, or it answered its last evaluation. A train request
        over the evaluation limit is served without the validations it asks for (of the
        global model, and of Ditto's personal model: ``validation_refused``)."""
        hospital = self.hospital
        broken = log.verify()
        if broken:
            return (f"hospital {hospital.name} serves nothing while its audit log is broken "
                    f"({broken})")
        accepted = hospital.accepted_tasks
        if accepted is not None and self.task_name not in accepted:
            return (f"hospital {hospital.name} does not accept task '{self.task_name}' "
                    f"(its node config accepts: {', '.join(accepted)})")
        kind = message_kind(message_type)
        if kind == MessageType.EVALUATE:
            return self._evaluation_problem(log)
        releases_personal = self.personalisation == "ditto" and not self.personal_withheld
        if kind == MessageType.TRAIN and (self.validates or releases_personal):
            self.validation_refused = self._evaluation_problem(log)
        return None

    def _evaluation_problem(self, log: AuditLog) -> str | None:
        limit = self.hospital.max_evaluations
        if limit is not None and log.evaluations() >= limit:
            return (f"hospital {self.hospital.name} has answered its {limit} evaluation(s) "
                    "(max-evaluations in its node config); evaluation refused")
        return None


def refuse(msg: Message, reason: str) -> Message:
    """An error reply: the server logs the reason with the hospital's name and goes on."""
    return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, reason), reply_to=msg)
