"""Patient-level DP: the accountant's numbers, the unit of privacy, the ledger and its budget,
plain weights back, and central DP's noise scale. Real Opacus, real Flower messages."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from opacus import GradSampleModule
from opacus.accountants import PRVAccountant, RDPAccountant

from client.app import app
from client.ledger import Budget, BudgetExceeded, PrivacyLedger
from client.privacy import PrivateRound, Release, epsilon, sample_rate
from client.trainer import DPSettings, LocalTrainer
from server.app import central_epsilon
from server.config import FEDERATION_KEYS
from server.strategies import build_strategy
from tasks.config import validate
from tasks.contract import PatientDraws
from tasks.packing import unpack
from tasks.protocol import UNIFORM_WEIGHT
from tests.helpers.cli import assert_one_line_error, run_config, spinefl
from tests.helpers.messages import node, privacy, request, task


@pytest.fixture
def hospital(tiny_cohort, tmp_path):
    """A hospital folder of 3 training patients with many slices each; one of them has a
    second series (two images, still one patient)."""
    import pandas as pd

    from tasks.manifest import Manifest

    manifest = tiny_cohort.with_absolute_paths(tmp_path)
    table = manifest.table
    second = table[table.split == "train"].iloc[[0]].assign(series_id="second-series")
    copy = tmp_path / "second-series.nii.gz"  # here, not in the cohort other tests share
    copy.write_bytes(Path(second["image"].iloc[0]).read_bytes())
    second["image"] = str(copy)
    Manifest(pd.concat([table, second], ignore_index=True), tmp_path).save(
        tmp_path / "manifest.csv")
    return tmp_path


def test_ledger_epsilon_is_the_opacus_accountants_for_the_same_history(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    history = [("run-a", Release(1.1, 0.25, 8)), ("run-a", Release(1.1, 0.25, 8)),
               ("run-b", Release(0.8, 0.5, 3))]
    for i, (run, release) in enumerate(history):
        entry = ledger.record(run, i + 1, release, 1.0, 1e-5, "rdp")
    for name, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        by_hand = cls()
        for _, release in history:
            for _ in range(release.steps):
                by_hand.step(noise_multiplier=release.noise_multiplier,
                             sample_rate=release.sample_rate)
        reread = PrivacyLedger(tmp_path)  # from disk, as after a restart
        assert reread.spent(1e-5, name) == pytest.approx(by_hand.get_epsilon(1e-5), rel=1e-6)
    run_a = RDPAccountant()
    for _ in range(16):
        run_a.step(noise_multiplier=1.1, sample_rate=0.25)
    assert PrivacyLedger(tmp_path).spent(1e-5, "rdp", "run-a") == pytest.approx(
        run_a.get_epsilon(1e-5), rel=1e-6)
    assert entry["epsilon_total"] == pytest.approx(PrivacyLedger(tmp_path).spent(1e-5, "rdp"))
    assert entry["accountant_state"]["history"] == [[1.1, 0.25, 8], [1.1, 0.25, 8],
                                                    [0.8, 0.5, 3]]


def test_budget_check_refuses_what_would_pass_it(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    round_ = Release(1.0, 0.5, 10)
    one, two = epsilon([round_], 1e-5), epsilon([round_, round_], 1e-5)
    budget = Budget((one + two) / 2, 1e-5)
    assert ledger.check(round_, budget, "rdp") == pytest.approx(one)
    ledger.record("r", 1, round_, 1.0, 1e-5, "rdp")
    with pytest.raises(BudgetExceeded, match="past this hospital's max-epsilon"):
        ledger.check(round_, budget, "rdp")
    assert PrivacyLedger(tmp_path).check(Release(1.0, 0.5, 10), Budget(None, 1e-5), "rdp") > one
    assert epsilon([round_, Release(0.0, 0.5, 1)], 1e-5) == math.inf  # a step without noise


def test_a_patient_with_many_slices_is_one_individual(hospital, inside_a_run):
    """The accountant's sample rate is over patients, and the DP dataset has one item each."""
    from tasks.manifest import Manifest

    manifest = Manifest.load(hospital / "manifest.csv").select(split="train")
    rows = task().select(manifest)
    patients = rows.table.patient_id.nunique()
    assert len(rows) > patients  # some patients have a CT and an MR
    per_slice = task().train_data(manifest, 2, 0)
    per_patient = task().train_data(manifest, 2, 0, per_patient=PatientDraws())
    assert len(per_slice.dataset) > 10 * patients and len(per_patient.dataset) == patients
    torch.manual_seed(0)
    reply = app(request(task().build_model().state_dict(), dp=privacy(noise_multiplier=1.0)),
                node(hospital))
    metrics = reply.content["metrics"]
    assert metrics["sample-rate"] == pytest.approx(sample_rate(patients, 2))
    assert metrics["sample-rate"] == pytest.approx(1 / math.ceil(patients / 2))
    entry = PrivacyLedger(hospital).entries[-1]
    assert (entry["sample_rate"], entry["steps"]) == (metrics["sample-rate"], 2)
    assert metrics["epsilon"] == pytest.approx(
        epsilon([Release(1.0, metrics["sample-rate"], 2)], 1e-5))


def test_dp_round_returns_plain_weights_and_leaves_no_hooks(hospital):
    segmentation = task()
    model = segmentation.build_model()
    from tasks.manifest import Manifest

    loader = segmentation.train_data(Manifest.load(hospital / "manifest.csv")
                                     .select(split="train"), 2, 0, per_patient=PatientDraws())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = LocalTrainer(segmentation, model, {"lr": 0.1, "schedule": "constant",
                                                 "weight_decay": 0.0}, torch.device("cpu"),
                           run_epochs=3)
    for _ in range(3):  # several rounds in one process: hooks must not pile up
        fit = trainer.fit(loader, 1, max_steps=1, dp=DPSettings(1.0, 1.0, "hooks", 1e-5, "rdp"))
        assert fit.release is not None and fit.release.steps == 1
        assert all(not m._forward_hooks and not m._backward_hooks and
                   not getattr(m, "_forward_pre_hooks", {}) for m in model.modules())
    plain = segmentation.build_model()
    plain.load_state_dict(model.state_dict(), strict=True)
    assert set(model.state_dict()) == set(before)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_draws_without_patients_still_step_with_noise_of_the_right_scale(monkeypatch):
    """Poisson sampling often draws nobody here (50 patients, q = 1/50): those steps add
    noise N(0, (sigma C / B)^2) too, count for the accountant, and the steps stop at the
    planned number."""

    class Patients(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 50

        def __getitem__(self, index: int) -> dict:  # zero images: gradients are zero
            return {"image": torch.zeros(1, 4), "label": torch.zeros(1, 1)}

    empty = []
    monkeypatch.setattr(PrivateRound, "noise_only_step",
                        lambda self, inner=PrivateRound.noise_only_step: (empty.append(1),
                                                                          inner(self)))
    model = torch.nn.Linear(4, 2000, bias=False)
    torch.nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = torch.utils.data.DataLoader(Patients(), batch_size=1)
    with PrivateRound(model, optimizer, loader, 0.7, 2.0, "hooks", max_steps=30) as private:
        taken = 0
        for _ in range(2):  # a second pass takes nothing: the 30 planned steps are spent
            for batch in private.batches:
                private.optimizer.zero_grad()
                (private.model(batch["image"]) ** 2).mean().backward()
                private.optimizer.step()
                taken += 1
    assert empty and taken + len(empty) == 30
    assert private.release == Release(0.7, 1 / 50, 30)
    expected = 30 ** 0.5 * 0.7 * 2.0 / 1  # 30 noisy steps, B = 50 * q = 1
    assert model.weight.detach().std().item() == pytest.approx(expected, rel=0.05)


def test_client_reply_weights_load_into_a_plain_model(hospital, inside_a_run):
    reply = app(request(task().build_model().state_dict(), dp=privacy(noise_multiplier=1.0)),
                node(hospital))
    assert list(reply.content["arrays"].keys()) == ["weights"]  # packed, no Opacus names
    plain = task().build_model()
    plain.load_state_dict(unpack(reply.content["arrays"], plain.state_dict()), strict=True)


def test_budget_refusal_is_an_error_reply_and_survives_a_restart(hospital, inside_a_run):
    dp = privacy(noise_multiplier=1.0)
    release = Release(1.0, 1 / math.ceil(3 / 2), 2)  # 3 train patients, 2 per step
    between = (epsilon([release], 1e-5) + epsilon([release, release], 1e-5)) / 2
    limit = {"max-epsilon": between, "delta": 1e-5}
    state = task().build_model().state_dict()
    first = app(request(state, 1, dp), node(hospital, **limit))
    assert not first.has_error()
    second = app(request(state, 2, dp), node(hospital, **limit))
    assert second.has_error() and "privacy budget" in second.error.reason
    assert len(PrivacyLedger(hospital).entries) == 1  # a refused round spends nothing
    # A restarted node (a new process) reads the same ledger and refuses too.
    script = textwrap.dedent(f"""
        import json
        from flwr.supercore.task_identity import TaskIdentity
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        from client.app import app
        from tests.helpers.messages import node, privacy, request, task
        reply = app(request(task().build_model().state_dict(), 3, privacy(noise_multiplier=1.0)),
                    node({str(hospital)!r}, **{limit!r}))
        print(json.dumps({{"error": reply.error.reason if reply.has_error() else ""}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "privacy budget" in json.loads(done.stdout.strip().splitlines()[-1])["error"]


def test_a_deleted_or_replaced_ledger_refuses_dp_rounds_and_reports_no_loss(hospital,
                                                                            inside_a_run):
    """The ledger never restarts from zero: with it gone (or an older copy back) while the
    audit log records DP rounds, the node refuses DP rounds and says why. A DP reply
    carries no training loss (the accountant does not cover it)."""
    dp, limit = privacy(noise_multiplier=1.0), {"max-epsilon": 100.0}
    state = task().build_model().state_dict()
    for server_round in (1, 2):
        reply = app(request(state, server_round, dp), node(hospital, **limit))
        assert not reply.has_error()
        assert "loss" not in reply.content["metrics"] and "epsilon" in reply.content["metrics"]
    ledger = hospital / "privacy_ledger.json"
    older = json.loads(ledger.read_text())
    ledger.unlink()
    refused = app(request(state, 3, dp), node(hospital, **limit))
    assert refused.has_error()
    assert "is missing but the audit log records 2 DP round(s)" in refused.error.reason
    ledger.write_text(json.dumps({"entries": older["entries"][:1]}))  # an older backup
    refused = app(request(state, 3, dp), node(hospital, **limit))
    assert refused.has_error() and "holds 1 round(s)" in refused.error.reason
    ledger.write_text(json.dumps(older))  # restored: the node goes on
    assert not app(request(state, 3, dp), node(hospital, **limit)).has_error()


def test_a_node_with_a_budget_refuses_training_without_dp(hospital, inside_a_run):
    reply = app(request(task().build_model().state_dict()), node(hospital, **{"max-epsilon": 8}))
    assert reply.has_error() and "trains only with differential privacy" in reply.error.reason


def test_a_node_refuses_a_part_its_task_does_not_have(hospital, inside_a_run):
    reply = app(request(task().build_model().state_dict(),
                        dp=privacy(noise_multiplier=1.0, trainable="encoder")), node(hospital))
    assert reply.has_error() and "privacy.trainable 'encoder' is not a part" in \
        reply.error.reason
    assert not (hospital / "privacy_ledger.json").exists()


def _reply(node_id: int, update: np.ndarray) -> Message:
    metadata = Metadata(run_id=1, message_id="", src_node_id=node_id, dst_node_id=0,
                        reply_to_message_id="request", group_id="1", created_at=0.0, ttl=60.0,
                        message_type="train")
    content = RecordDict({"arrays": ArrayRecord({"w": Array(update)}),
                          "metrics": MetricRecord({"num-examples": 10 * node_id,
                                                   UNIFORM_WEIGHT: 1.0})})
    return Message(content, metadata=metadata)


class Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]


def _central(sigma: float, clip: float):
    federation = validate({"federation": {"central_dp": True, "central_noise_multiplier": sigma,
                                          "central_clipping_norm": clip, "min_hospitals": 4}},
                          {"federation": FEDERATION_KEYS}, "test")["federation"]
    return build_strategy(federation, hospitals=4)


def test_central_dp_adds_noise_of_the_configured_scale(inside_a_run):
    strategy = _central(sigma=0.8, clip=2.0)
    current = np.zeros(200_000, dtype=np.float32)
    list(strategy.configure_train(1, ArrayRecord({"w": Array(current)}), ConfigRecord(), Grid()))
    # Small updates (norm 0.45, under the clipping norm; Flower's clipping divides by the
    # norm, so an update of exactly zero would raise).
    update = np.full_like(current, 1e-3)
    arrays, _ = strategy.aggregate_train(1, [_reply(i, update.copy()) for i in range(1, 5)])
    noise = arrays["w"].numpy() - update
    assert noise.std() == pytest.approx(0.8 * 2.0 / 4, rel=0.02)
    assert abs(noise.mean()) < 0.01


def test_central_dp_clips_each_update_and_averages_uniformly(inside_a_run):
    strategy = _central(sigma=0.0, clip=1.0)
    current = np.zeros(3, dtype=np.float32)
    list(strategy.configure_train(1, ArrayRecord({"w": Array(current)}), ConfigRecord(), Grid()))
    big = np.array([30.0, 40.0, 0.0], dtype=np.float32)  # norm 50, clipped to 1
    small = np.array([0.0, 0.0, 0.5], dtype=np.float32)  # under the norm, kept
    arrays, _ = strategy.aggregate_train(1, [_reply(1, big)] + [
        _reply(i, small.copy()) for i in range(2, 5)])
    np.testing.assert_allclose(arrays["w"].numpy(), (big / 50 + 3 * small) / 4, rtol=1e-5)
    assert central_epsilon({"central_noise_multiplier": 1.0, "central_delta": 1e-5}, 5) == \
        pytest.approx(epsilon([Release(1.0, 1.0, 5)], 1e-5))


def test_ledger_command_prints_every_round_and_the_total(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    ledger.record("run-a", 1, Release(1.0, 0.5, 4), 1.0, 1e-5, "rdp")
    ledger.record("run-b", 1, Release(1.2, 0.5, 4), 1.0, 1e-5, "rdp")
    done = spinefl("hospital", "ledger", "--data", str(tmp_path))
    assert done.returncode == 0, done.stderr
    total = epsilon([Release(1.0, 0.5, 4), Release(1.2, 0.5, 4)], 1e-5)
    assert "run-a" in done.stdout and "run-b" in done.stdout
    assert f"Total: epsilon {total:.3f} at delta 1e-05 per patient, over 2 round(s) of 2 run(s)" \
        in done.stdout.replace("\n", " ")
    assert_one_line_error(spinefl("hospital", "ledger", "--data", str(tmp_path / "none")),
                          "no privacy ledger")


@pytest.mark.slow  # a real DP training run (half a minute)
def test_pooled_dp_training_reaches_its_target_epsilon(tiny_cohort, tmp_path):
    def config(**privacy):
        return run_config(tmp_path / "run.toml", tiny_cohort.root / "manifest.csv",
                          tmp_path / "run", privacy={"enabled": True, **privacy})

    assert_one_line_error(spinefl("train", "--config", str(config())),
                          "privacy.enabled needs privacy.noise_multiplier > 0 or "
                          "privacy.target_epsilon > 0")
    done = spinefl("train", "--config", str(config(target_epsilon=4.0)))
    assert done.returncode == 0, done.stderr
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert 3.9 <= metrics["epsilon"].iloc[-1] <= 4.0
    assert metrics["epsilon"].is_monotonic_increasing


@pytest.mark.slow  # a real DP training run (half a minute)
def test_pooled_dp_from_a_starting_model_trains_only_the_chosen_part(tiny_cohort, tmp_path):
    """`spinefl train` starts from train.init_checkpoint and, with privacy.trainable = head,
    leaves every other parameter at the starting model's value; a part the task does not
    have and a starting model of other settings are refused in one line."""
    from tasks.checkpoint import load_checkpoint, save_checkpoint
    from tasks.registry import task_class

    segmentation = task_class("segmentation")
    settings = validate({"task": {"channels": [8, 16]}}, {"task": segmentation.keys},
                        "test")["task"]
    torch.manual_seed(1)
    start = segmentation(settings)
    save_checkpoint(tmp_path / "public.pt", start, start.build_model())
    other = segmentation({**settings, "channels": [4, 8]})
    save_checkpoint(tmp_path / "other.pt", other, other.build_model())

    def run(checkpoint: str, part: str):
        config = run_config(
            tmp_path / "run.toml", tiny_cohort.root / "manifest.csv", tmp_path / "run",
            train={"epochs": 1, "init_checkpoint": str(tmp_path / checkpoint)},
            privacy={"enabled": True, "noise_multiplier": 1.0, "slices_per_patient": 2,
                     "augmentations": 1, "trainable": part})
        return spinefl("train", "--config", str(config), "--force")

    assert_one_line_error(run("public.pt", "encoder"), "privacy.trainable 'encoder' is not a "
                          "part of task segmentation (choose all, decoder, head)")
    assert_one_line_error(run("other.pt", "head"), "task settings differ")
    done = run("public.pt", "head")
    assert done.returncode == 0, done.stderr
    assert "2 samples x 1 augmentations per patient, training head parameters" in " ".join(
        done.stdout.split())
    _, trained, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    _, public, _ = load_checkpoint(tmp_path / "public.pt")
    public_state = public.state_dict()
    for name, value in trained.state_dict().items():
        assert torch.equal(value, public_state[name]) == (not name.startswith("model.2.")), name


def test_two_processes_cannot_spend_the_same_budget_at_once(tmp_path):
    """Check-to-record holds the ledger's lock: the second process (a second run at the same
    node) sees the first one's round before it checks its own."""
    script = textwrap.dedent(f"""
        import time
        from client.ledger import PrivacyLedger
        from client.privacy import Release
        with PrivacyLedger.locked({str(tmp_path)!r}) as ledger:
            print(len(ledger.entries), flush=True)
            time.sleep(1.0)
            ledger.record("run", 1, Release(1.0, 0.5, 2), 1.0, 1e-5, "rdp")
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    seen = sorted(int(run.communicate(timeout=60)[0].strip()) for run in runs)
    assert seen == [0, 1]
    assert len(PrivacyLedger(tmp_path).entries) == 2


@pytest.mark.parametrize("layer", [
    torch.nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1, output_padding=1),
    torch.nn.ConvTranspose2d(2, 4, 2, stride=2, bias=False),
    torch.nn.PReLU(), torch.nn.PReLU(3)])
def test_our_per_sample_gradient_rules_match_functorch(layer):
    from client import grad_samplers

    x = torch.randn(4, 3 if not isinstance(layer, torch.nn.ConvTranspose2d) or
                    layer.in_channels == 3 else 2, 7, 6)
    reference = GradSampleModule(torch.nn.Sequential(layer), force_functorch=True)
    (reference(x) ** 2).sum().backward()
    expected = {n: p.grad_sample.clone() for n, p in reference.named_parameters()}
    reference._close()
    grad_samplers.register()
    ours = GradSampleModule(torch.nn.Sequential(layer))
    (ours(x) ** 2).sum().backward()
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad_sample, expected[name], rtol=1e-4, atol=1e-5)
    ours._close()
