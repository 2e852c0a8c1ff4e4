"""The ServerApp: the coordinator's side of a federated run.

The run config names the experiment file (``experiment``: absolute, or
relative to the app folder, e.g. ``configs/deployment.toml``), whether to
``resume`` after the last finished round, in simulation the virtual
hospitals' folder (``partitions``), and in deployment the coordinator's
admitted list (``admitted``: only those nodes take part, ``server.admission``;
a deployed run without it is refused).
A relative output folder is relative to the working folder of the SuperLink
(the coordinator folder in deployment).
The ServerApp asks every node which hospital it is, then runs the strategy's
rounds, one message to each hospital a round: its train request also validates
the global model it carries (``server.folded_validation``), and a separate
evaluation follows the last round only; replies are collected as they arrive
(``server.polling``). Every update is validated before aggregation (``server.validation``),
no round waiting forever for hospitals that are gone (``server.sampling``),
or, with ``federation.secure_aggregation``, SecAgg+ rounds in which only the
sum of the updates is seen (``server.secure_aggregation``). After each round
a callback writes, in the experiment's output folder:

- ``federated_metrics.csv``: one row per hospital per round (training loss,
  steps, samples, learning rate, time; the task's validation metrics of the round's
  aggregate, filled in when the next round's replies bring them; errors; the round's
  wall time on the server);
- ``checkpoint_round.pt``: the global weights, the round reached, the run's identity and
  the server optimiser's state (FedAvgM's momentum, FedAdam's and FedYogi's moments), to
  resume;
- ``tensorboard/<hospital>/``: the same metrics as TensorBoard scalars, step = round.

At the end ``model.pt`` holds the final global model, usable by
``spinefl predict`` as it is.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from server.admission import AdmittedGrid, admitted_nodes
from server.config import load_experiment
from server.folded_validation import FoldedValidation
from server.optimiser_state import SERVER_OPTIMISER, optimiser_state, restore_optimiser
from server.polling import PromptGrid, prompt_reply_pulls
from server.recorder import HospitalRecorder
from server.resumption import GlobalRounds
from server.sampling import SamplingGuard, TooFewHospitals, wait_for_hospitals
from server.secure_aggregation import SecureAggregation
from server.strategies import build_strategy, request_hints
from server.update_precision import FullWeights
from server.validation import UpdateValidation
from tasks.checkpoint import load_checkpoint, save_checkpoint, starting_weights
from tasks.contract import Task
from tasks.errors import UserError
from tasks.files import write_table
from tasks.packing import pack, unpack
from tasks.protocol import FEDERATION_ID, UPDATE_PRECISION
from tasks.run_config import LOCAL_TRAIN_KEYS, PERSONAL_KEYS, task_from_config
from tasks.seeding import seed_everything
from tasks.tracking import ScalarLog

app = ServerApp()

ROUND_CHECKPOINT = "checkpoint_round.pt"
METRICS = "federated_metrics.csv"
APP_DIR = Path(__file__).resolve().parents[1]


def experiment_path(name: str) -> Path:
    """The experiment file a run config names: absolute, or inside the app folder."""
    path = Path(name)
    return path if path.is_absolute() else APP_DIR / path


def hospital_names(grid: Grid, nodes: list[int], partitions: str, timeout: float
                   ) -> dict[int, str]:
    """Ask each node which hospital it is (nodes that do not answer keep their id)."""
    content = RecordDict({"config": ConfigRecord({"partitions": partitions})})
    messages = [Message(content, dst_node_id=node, message_type=MessageType.QUERY)
                for node in nodes]
    names = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            log(WARNING, "node %s did not say its name: %s", reply.metadata.src_node_id,
                reply.error.reason)
            continue
        names[reply.metadata.src_node_id] = str(reply.content["hospital"]["name"])
    return names


def starting_point(task: Task, experiment: dict[str, Any], out: Path, resume: bool = False
                   ) -> tuple[dict, int]:
    """Weights to start from and the rounds already done: with ``resume``, the round
    checkpoint of this output folder; else the configured initial checkpoint, else a fresh
    model (an output folder holding finished rounds is then refused, not overwritten)."""
    checkpoint = out / ROUND_CHECKPOINT
    if resume and not checkpoint.is_file():
        raise UserError(f"{out}: no finished round to resume from ({ROUND_CHECKPOINT})")
    if checkpoint.is_file():
        stored, model, payload = load_checkpoint(checkpoint)
        if not resume:
            raise UserError(f"{out}: holds round {payload['round']} of an earlier run; resume "
                            "it (run config resume=true) or choose another output.dir")
        if stored.settings != task.settings:
            raise UserError(f"{checkpoint}: task settings differ from the experiment's")
        log(INFO, "Resuming after round %s from %s", payload["round"], checkpoint)
        return model.state_dict(), int(payload["round"])
    if experiment["train"]["init_checkpoint"]:
        return starting_weights(Path(experiment["train"]["init_checkpoint"]), task), 0
    seed_everything(experiment["train"]["seed"])
    return task.build_model().state_dict(), 0


def resumed_payload(out: Path, resume: bool) -> dict[str, Any]:
    """What the round checkpoint keeps beside the weights, for a resumed run (else empty)."""
    if resume and (out / ROUND_CHECKPOINT).is_file():
        return load_checkpoint(out / ROUND_CHECKPOINT)[2]
    return {}


def federation_identity(resumed: dict[str, Any]) -> str:
    """The run's identity, the same across resumptions (``resumed``, the round checkpoint's
    payload, keeps it): a hospital keeps its personal model of the run under it."""
    kept = resumed.get(FEDERATION_ID)
    if isinstance(kept, str) and re.fullmatch(r"[0-9a-f]{32}", kept):
        return kept
    return uuid.uuid4().hex


def central_epsilon(federation: dict[str, Any], rounds: int) -> float:
    """Hospital-level epsilon of central DP after ``rounds`` releases (every hospital every
    round, so no sampling amplification: sample rate 1), by the Opacus RDP accountant."""
    from opacus.accountants import RDPAccountant

    sigma = federation["central_noise_multiplier"]
    if sigma <= 0:
        return math.inf
    accountant = RDPAccountant()
    accountant.history = [(sigma, 1.0, rounds)]
    return float(accountant.get_epsilon(federation["central_delta"]))


def request_config(task: Task, experiment: dict[str, Any], partitions: str,
                   federation_id: str = "") -> ConfigRecord:
    """What every hospital needs to train and evaluate: task, the local training keys a
    hospital honours (never the device: that is the hospital's own), DP, personalisation,
    the run's identity, partitions."""
    federation = experiment["federation"]
    return ConfigRecord({
        "personal": json.dumps({key.name: federation[key.name] for key in PERSONAL_KEYS}),
        FEDERATION_ID: federation_id,
        "task": json.dumps({"name": task.name, "settings": task.settings}),
        "train": json.dumps({key.name: experiment["train"][key.name]
                             for key in LOCAL_TRAIN_KEYS}),
        "privacy": json.dumps(experiment["privacy"]),
        "local-epochs": federation["local_epochs"],
        "local-steps": federation["local_steps"],
        "num-rounds": federation["rounds"],
        "partitions": partitions,
        UPDATE_PRECISION: federation["update_precision"],
    })


def merge_rows(earlier: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The metrics table ``earlier`` with ``rows`` added or, for a round and hospital it
    has, filled in (a row's values win); earlier columns first."""
    new = pd.DataFrame(rows)
    if earlier.empty or new.empty:
        return new if earlier.empty else earlier
    key = ["round", "hospital"]
    table = new.set_index(key).combine_first(earlier.set_index(key)).reset_index()
    columns = [*earlier.columns, *(c for c in new.columns if c not in earlier.columns)]
    return table[columns].sort_values(key, kind="stable").reset_index(drop=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment named in the run config."""
    experiment = load_experiment(experiment_path(str(context.run_config["experiment"])))
    partitions = str(context.run_config.get("partitions", ""))
    admitted = str(context.run_config.get("admitted", ""))
    if admitted:
        grid = AdmittedGrid(grid, {int(node) for node in admitted_nodes(Path(admitted))})
        prompt_reply_pulls()
    elif not partitions:  # deployment: never without the coordinator's list
        raise UserError("the run config names no admitted list ('admitted'): launch "
                        "deployed runs with `spinefl coordinator run`, which passes the "
                        "coordinator's admitted.json")
    grid = PromptGrid(grid)
    resume = bool(context.run_config.get("resume", False))
    out = Path(experiment["output"]["dir"])
    out.mkdir(parents=True, exist_ok=True)
    task = task_from_config(experiment)
    federation = experiment["federation"]
    timeout = federation["round_timeout"]

    weights, done = starting_point(task, experiment, out, resume)
    resumed = resumed_payload(out, resume)
    identity = federation_identity(resumed)
    nodes = wait_for_hospitals(grid, federation["min_hospitals"], timeout)
    names = hospital_names(grid, nodes, partitions, timeout)
    log(INFO, "Hospitals: %s", ", ".join(sorted(names.values())))
    remaining = federation["rounds"] - done
    optimiser = build_strategy(federation, len(names))
    restore_optimiser(optimiser, resumed.get(SERVER_OPTIMISER, {}))
    recorder = HospitalRecorder(GlobalRounds(optimiser, done), names, round_offset=done)
    model = task.build_model()
    clock = {"last": time.perf_counter()}
    scalars = ScalarLog(out, fresh=done == 0)

    def round_end(server_round: int, arrays: ArrayRecord) -> None:
        now = time.perf_counter()
        seconds, clock["last"] = now - clock["last"], now
        if server_round == 0:
            return None
        # This round's training, and the validation of the previous round's aggregate that
        # came with it (the last round's own validation came by a separate evaluation).
        rows = [{**row, "round_seconds": seconds} for row in recorder.rows(server_round)]
        if federation["central_dp"]:
            spent = central_epsilon(federation, server_round + done)
            rows = [{**row, "central_epsilon": spent} for row in rows]
            log(INFO, "round %s | central DP: epsilon %.3f per hospital at delta %g",
                server_round + done, spent, federation["central_delta"])
        validated = [{k: v for k, v in row.items() if k in ("round", "hospital")
                      or k.startswith("val_")} for row in recorder.rows(server_round - 1)]
        validated = [row for row in validated if len(row) > 2]
        path = out / METRICS
        earlier = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        # whole or not at all: others read it while a run goes on
        write_table(merge_rows(earlier, validated + rows), path)
        score = f"val_{task.score}"
        for row in validated + [row for row in rows if score in row]:
            log(INFO, "round %s | %s | val %s %.3f", row["round"], row["hospital"],
                task.score, row[score])
        for row in validated + rows:
            scalars.add(row["hospital"], row["round"],
                        {k: v for k, v in row.items() if k not in ("round", "hospital")})
        model.load_state_dict(unpack(arrays, model.state_dict()))
        save_checkpoint(out / ROUND_CHECKPOINT, task, model, round=server_round + done,
                        **{FEDERATION_ID: identity,
                           SERVER_OPTIMISER: optimiser_state(optimiser)})
        return None

    if remaining > 0:
        config = request_config(task, experiment, partitions, identity)
        arrays = pack(weights)  # one array on the wire (tasks.packing)
        try:
            if federation["secure_aggregation"]:
                config = ConfigRecord({**config, **request_hints(federation)})
                arrays = SecureAggregation(recorder, federation).start(
                    grid, context, arrays, remaining, timeout, config, ConfigRecord(config),
                    round_end)
            else:
                validated = UpdateValidation(recorder, federation["max_update_norm"])
                strategy = FoldedValidation(
                    SamplingGuard(FullWeights(validated), federation["min_hospitals"],
                                  timeout, names),
                    last_round=remaining, resumed=done > 0)
                result = strategy.start(grid, arrays, num_rounds=remaining, timeout=timeout,
                                        train_config=config,
                                        evaluate_config=ConfigRecord(config),
                                        evaluate_fn=round_end)
                arrays = result.arrays or arrays
        except TooFewHospitals as e:
            log(ERROR, "The run stops: %s. Finished rounds are kept in %s; when the hospitals "
                "are back, run again with resume=true.", e, out / ROUND_CHECKPOINT)
            raise
        finally:
            scalars.close()
        weights = unpack(arrays, model.state_dict())
    model.load_state_dict(weights)
    save_checkpoint(out / "model.pt", task, model, round=federation["rounds"],
                    **{FEDERATION_ID: identity})
    log(INFO, "Final global model: %s", out / "model.pt")
