"""A real federation on loopback: local SuperLink, Ray simulation engine, real ClientApps."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from simulation.config import load_simulation
from simulation.federation import run_federated
from simulation.simulate import simulate, split_hospitals
from tasks.checkpoint import load_checkpoint
from tasks.manifest import Manifest
from tests.helpers.flower_processes import flower_processes, left_after
from tests.helpers.stops import stop_when
from tests.helpers.tracking import mlflow_metrics, scalars

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
@pytest.fixture
def smoke(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_simulation(ROOT / "configs" / "federated_smoke.toml")
    config["phantoms"]["dir"] = str(tmp_path / "phantoms")
    config["output"]["dir"] = str(tmp_path / "run")
    return config


def test_a_killed_simulate_leaves_nothing_running_and_resumes_without_a_doubled_round(
        smoke, tmp_path):
    """`spinefl simulate` killed (SIGKILL: no clean-up of its own runs) after round 1: its
    Flower and Ray processes end within seconds; --resume continues after round 1 in the
    same folder (each round once), then the baselines and the report are made. The run
    personalises with Ditto: each hospital's personal model outlives the kill (one run
    identity across the resumption) and the report puts every model on every hospital."""
    import signal

    import tomli_w

    from tests.helpers.cli import SPINEFL

    smoke["federation"]["rounds"] = 2
    smoke["federation"]["personalisation"] = "ditto"
    config = {**smoke, "baselines": {"pooled": False, "local": False}}
    (tmp_path / "smoke.toml").write_text(tomli_w.dumps(config))
    metrics = tmp_path / "run" / "federated" / "federated_metrics.csv"
    stop_when([str(SPINEFL), "simulate", "--config", str(tmp_path / "smoke.toml")],
              lambda: metrics.is_file() and len(pd.read_csv(metrics)) >= 3,  # round 1 ended
              signal.SIGKILL, timeout=300, cwd=ROOT)
    assert left_after(lambda: flower_processes(tmp_path), 30) == set(), \
        "a Flower or Ray process outlived SIGKILL"
    results = simulate(smoke, resume=True)
    assert flower_processes(tmp_path) == set(), "a Flower or Ray process was left behind"

    run = tmp_path / "run"
    assert "Resuming after round 1" in (run / "federated" / "run.log").read_text()
    assert set(results.model) == {"federated", "personal", "local", "pooled"}
    assert set(results.hospital) == {"ct-a", "ct-c", "mr-b"}
    assert len(results) == 4 * 3, "each hospital's own models only"
    for name in ("ct-a", "ct-c", "mr-b"):
        kept = list((run / "hospitals" / name / ".spinefl" / "personal").glob("*/model.pt"))
        assert len(kept) == 1, "the resumed run kept the run's identity"
        assert load_checkpoint(kept[0])[2]["round"] == 2
    rounds = pd.read_csv(run / "federated" / "federated_metrics.csv")
    assert rounds.personal_val_dice_mean.between(0, 1).all(), "every round, every hospital"
    matrix = pd.read_csv(run / "report" / "cross_site_matrix.csv").set_index("trained")
    assert sorted(matrix.index) == ["federated", "local: ct-a", "local: ct-c", "local: mr-b",
                                    "personal: ct-a", "personal: ct-c", "personal: mr-b",
                                    "pooled"]
    assert matrix.notna().all().all() and list(matrix.columns) == ["ct-a", "ct-c", "mr-b"]
    own = results.set_index(["model", "hospital"]).dice_mean
    assert matrix.loc["local: mr-b", "mr-b"] == pytest.approx(own["local", "mr-b"])
    assert sorted(rounds["round"].unique()) == [1, 2]
    assert (rounds.groupby("round").size() == 3).all(), "each round once, three hospitals"
    # Round 1's validation came with the resumed run's round-2 train requests; round 2's
    # with the evaluation after the last round.
    assert rounds.val_dice_vertebra.between(0, 1).all()
    for hospital, group in rounds.groupby("hospital"):  # TensorBoard: each round once too
        logged = scalars(run / "federated" / "tensorboard" / hospital)["train_loss"]
        assert [step for step, _ in logged] == [1, 2], (hospital, logged)
        tracked = mlflow_metrics(run / "federated" / "mlruns", hospital)["train_loss"]
        assert [(s, pytest.approx(v, rel=1e-6)) for s, v in tracked] == logged  # f64 vs f32
        assert [v for _, v in logged] == pytest.approx(list(group.sort_values("round")
                                                           .train_loss))
    assert set(rounds.hospital) == {"ct-a", "ct-c", "mr-b"}
    assert {"train_loss", "train_num-examples", "val_dice_vertebra", "val_dice_disc",
            "val_dice_canal", "train_seconds"} <= set(rounds.columns)
    # num-examples counts a hospital's training samples (axial slices), not batches, and
    # stays the same from round to round.
    samples = rounds.groupby("hospital")["train_num-examples"]
    assert (samples.nunique() == 1).all()
    assert (samples.first() > 4 * smoke["train"]["batch_size"]).all()
    for name in ("ct-a", "ct-c", "mr-b"):
        own = Manifest.load(run / "hospitals" / name / "manifest.csv")
        assert set(own.table.site) == {name}
    task, _, payload = load_checkpoint(run / "federated" / "model.pt")
    assert payload["round"] == 2 and task.name == "segmentation"
    for name in ("summary.md", "comparison.png", "dice_mean_per_round.png", "results.csv",
                 "cross_site.csv", "cross_site.png"):
        assert (run / "report" / name).is_file()
    shown = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (run / "report" / "summary.md").read_text())
    assert set(shown) == {"comparison.png", "cross_site.png", "dice_mean_per_round.png"}
    summary = (run / "report" / "summary.md").read_text()
    assert re.search(r"federated \(global model\) \d+; federated \(personal models\) \d+; "
                     r"pooled \d+; local-only \d+", summary)


def test_a_failing_hospital_does_not_stop_the_round(smoke, tmp_path):
    from simulation.phantoms.config import cohort_config
    from simulation.phantoms.generator import generate
    from tasks.config import load_toml

    cohort = cohort_config(load_toml(ROOT / "configs" / "phantoms_smoke.toml"), "smoke")
    manifest = generate(cohort, tmp_path / "phantoms")
    folder = tmp_path / "hospitals"
    hospitals = split_hospitals(manifest, smoke["partition"], folder)
    broken = folder / "mr-b" / "manifest.csv"
    broken.write_text("patient_id,modality\nP1,PET\n")  # the ClientApp raises on reading it
    import tomli_w

    experiment = {"data": {"manifest": str(folder / "ct-a" / "manifest.csv")},
                  "task": smoke["task"], "train": smoke["train"],
                  "federation": {**smoke["federation"], "min_hospitals": 2},
                  "output": {"dir": str(tmp_path / "federated")}}
    (tmp_path / "experiment.toml").write_text(tomli_w.dumps(experiment))
    lines: list[str] = []
    run_federated(tmp_path / "experiment.toml", folder, len(hospitals), tmp_path / "work",
                  lines.append)
    assert flower_processes(tmp_path) == set()
    rounds = pd.read_csv(tmp_path / "federated" / "federated_metrics.csv")
    failed = rounds[rounds.hospital == "mr-b"]
    assert len(failed) == 2
    for reason in failed["train_error"]:
        assert "mr-b/manifest.csv: missing column" in reason and "\n" not in reason
    healthy = rounds[rounds.hospital != "mr-b"]
    assert set(healthy.hospital) == {"ct-a", "ct-c"} and healthy["train_loss"].notna().all()
    assert any("mr-b failed in train" in line for line in lines)
    assert (tmp_path / "federated" / "model.pt").is_file()


def test_a_hang_up_stops_every_process_the_run_started(tmp_path):
    """SIGHUP (a closed terminal or SSH session) stops simulate as Ctrl-C does (one handler
    serves SIGINT, SIGTERM and SIGHUP; tests/simulation/test_faults.py sends the others to
    `train`): status 129, nothing left running, the folder unlocked."""
    import signal

    import tomli_w

    from tasks.config import load_toml
    from tests.helpers.cli import SPINEFL

    config = load_toml(ROOT / "configs" / "federated_smoke.toml")
    config["phantoms"]["dir"] = str(tmp_path / "phantoms")
    # The copy lives elsewhere: the cohort it names is relative to the original's folder.
    config["phantoms"]["config"] = str(ROOT / "configs" / config["phantoms"]["config"])
    config["output"]["dir"] = str(tmp_path / "run")
    config["federation"]["rounds"] = 50
    (tmp_path / "smoke.toml").write_text(tomli_w.dumps(config))
    run = stop_when([str(SPINEFL), "simulate", "--config", str(tmp_path / "smoke.toml")],
                    lambda: any("ClientAppActor" in c for _, c in flower_processes(tmp_path)),
                    signal.SIGHUP, timeout=180, cwd=ROOT)
    assert run.returncode == 128 + signal.SIGHUP
    assert flower_processes(tmp_path) == set(), "a Flower or Ray process outlived SIGHUP"
    assert not (tmp_path / "run" / ".spinefl.lock").exists()


def test_dp_simulation_records_epsilon_and_a_refusing_hospital_lets_the_round_go_on(
        smoke, tmp_path):
    """Patient-level DP at every hospital; one hospital (a single training patient, so every
    step includes it) reaches its budget after round 1 and refuses round 2 while the other
    trains on; the metrics table, ledgers and report say so."""
    from client.ledger import PrivacyLedger
    from client.privacy import Release, epsilon

    # iid, seed 0: hospital-0 gets 2 training patients (q = 1/2), hospital-1 one (q = 1).
    smoke["partition"].update({"method": "iid", "hospitals": 2, "seed": 0})
    smoke["train"]["batch_size"] = 1
    smoke["federation"].update({"min_hospitals": 2, "local_steps": 1})
    smoke["baselines"].update({"pooled": False, "local": False})
    smoke["privacy"].update({"enabled": True, "noise_multiplier": 1.0})
    one, two = (epsilon([Release(1.0, 1.0, 1)] * n, 1e-5) for n in (1, 2))
    smoke["hospitals"].update({"max_epsilon": (one + two) / 2, "delta": 1e-5})
    simulate(smoke)
    assert flower_processes(tmp_path) == set()
    run = tmp_path / "run"
    rounds = pd.read_csv(run / "federated" / "federated_metrics.csv")
    rates = rounds[rounds["round"] == 1].set_index("hospital")["train_sample-rate"]
    small = rates.idxmax()
    assert rates[small] == 1.0 and rates.min() < 1.0
    second = rounds[rounds["round"] == 2].set_index("hospital")
    assert "privacy budget" in second.loc[small, "train_error"]
    other = rates.idxmin()
    assert second.loc[other, "train_epsilon"] > rounds.set_index(["round", "hospital"]).loc[
        (1, other), "train_epsilon"]
    for hospital in rates.index:
        ledger = PrivacyLedger(run / "hospitals" / hospital)
        assert len(ledger.entries) == (1 if hospital == small else 2)
        assert ledger.entries[-1]["epsilon_total"] == pytest.approx(
            rounds[(rounds.hospital == hospital)]["train_epsilon-total"].max())
    summary = (run / "report" / "summary.md").read_text()
    assert f"hospital {small} refused to train" in summary
    assert "per patient at hospital" in summary
    assert "2 slice(s) x 2 augmentation(s) averaged into one gradient clipped to 1" in \
        " ".join(summary.split())
    assert "![Epsilon spent per round at each hospital](epsilon_per_round.png)" in summary
    assert (run / "report" / "epsilon_per_round.png").is_file()


def test_a_grading_federation_trains_with_patient_level_dp(smoke, tmp_path):
    """The tasks other than segmentation go through the same real Flower federation: disc
    grading with DP-SGD at every hospital, two rounds; every hospital reports its grading
    metrics and epsilon, and the report ranks models by the grading score."""
    from tasks.config import validate
    from tasks.grading import GradingTask

    smoke["task"] = {"name": "grading",
                     **validate({}, {"task": GradingTask.keys}, "grading")["task"]}
    smoke["federation"].update({"local_steps": 2})
    smoke["baselines"].update({"pooled": True, "local": False})
    smoke["privacy"].update({"enabled": True, "noise_multiplier": 1.0})
    results = simulate(smoke)
    assert flower_processes(tmp_path) == set()
    rounds = pd.read_csv(tmp_path / "run" / "federated" / "federated_metrics.csv")
    assert set(rounds.hospital) == {"ct-a", "ct-c", "mr-b"}
    last = rounds[rounds["round"] == 2]
    assert last["val_pfirrmann_kappa"].notna().all()
    assert (last["train_epsilon"] > 0).all()
    assert set(results.model) == {"federated", "pooled"}
    assert results["pfirrmann_accuracy"].between(0, 1).all()
    task, _, payload = load_checkpoint(tmp_path / "run" / "federated" / "model.pt")
    assert task.name == "grading" and payload["round"] == 2
    assert "pfirrmann_kappa" in (tmp_path / "run" / "report" / "summary.md").read_text()
