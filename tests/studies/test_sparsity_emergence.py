import json
from functools import partial

import numpy as np
import pytest

from cli_runner import cli
from taskloc.activations.lasttoken import last_token_metrics
from taskloc.errors import ConfigError
from taskloc.metrics import metric_profile
from taskloc.models import ModelConfig
from taskloc.runconfig import resolve_config
from taskloc.studies.sparsity_emergence import (
    U_RULE,
    Plan,
    SparsityEmergenceConfig,
    SparsityEmergenceStudy,
    checkpoint_steps,
    gap_estimates,
    init_model,
    learned_rule,
    summarise,
    trajectory,
    u_estimates,
)
from taskloc.tasks import VOCAB_SIZE
from taskloc.train import TrainConfig

STUDY = "studies.sparsity-emergence."


def tiny_plan(steps: int = 4, ckpt_every: int = 100) -> Plan:
    model = ModelConfig(vocab_size=VOCAB_SIZE, n_layer=2, n_head=2, d_model=16, d_mlp=32)
    return Plan(model, ["add", "sort"], "reverse", [1, 2], [3], {}, TrainConfig(steps=steps, batch_size=8, warmup=1, ckpt_every=ckpt_every),
                checkpoint_steps(steps, 3), 4, 1234, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "ln_final.hook_normalized"],
                "taskloc")


def test_checkpoint_steps_are_log_spaced_from_zero_to_the_end():
    assert checkpoint_steps(1000, 4) == [0, 1, 10, 100, 1000]
    assert checkpoint_steps(3, 10) == [0, 1, 2, 3]  # duplicates dropped
    assert checkpoint_steps(50, 1) == [0, 50]


def test_step_zero_is_the_fresh_initialisation_of_the_same_seed():
    plan = tiny_plan()
    run = trajectory(plan, seed=5)
    assert run["steps"] == plan.steps
    prompts = plan.prompts(5)
    fresh = init_model(plan.model, 5)
    halves = {name: np.random.default_rng([5, len(p), 4242]).permutation(len(p)) < len(p) // 2 for name, p in prompts.items()}
    for name, examples in prompts.items():
        values = last_token_metrics(fresh, [(e.prompt, e.target) for e in examples], plan.sites, partial(metric_profile, convention="taskloc"))
        expected = summarise(values.metrics, halves[name])
        assert run["records"][0]["sets"][name]["stats"] == expected
    # training moved the model: the last step differs from step 0
    assert run["records"][-1]["sets"]["familiar"]["stats"] != run["records"][0]["sets"]["familiar"]["stats"]


def test_a_killed_run_resumes_to_the_same_trajectory(tmp_path, monkeypatch):
    import taskloc.studies.sparsity_emergence as se

    plan = tiny_plan(steps=6, ckpt_every=2)
    plan.steps = [0, 1, 3, 5, 6]
    whole = trajectory(plan, seed=1)
    real, calls = se.last_token_metrics, {"n": 0}

    def dies_at_step_five(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 3 * 3:  # 3 sets per checkpoint; steps 0, 1, 3 are measured, then the run is killed
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(se, "last_token_metrics", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        trajectory(plan, seed=1, folder=tmp_path)
    assert (tmp_path / "checkpoint.safetensors").exists()
    monkeypatch.setattr(se, "last_token_metrics", real)
    resumed = trajectory(plan, seed=1, folder=tmp_path)
    assert resumed == whole


def _gap(init: float, final: float, seeds: int = 4, noise: float = 0.05, steps: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    path = np.linspace(init, final, steps)
    return path[None, :] + noise * rng.standard_normal((seeds, steps))


@pytest.mark.parametrize("init, final, noise, verdict, label", [
    (0.0, 1.5, 0.05, "supported", "learned"),
    (1.5, 1.5, 0.05, "not supported", "intrinsic"),
    (-1.0, 1.5, 0.05, "not supported", "intrinsic"),  # present at init, even if in the other direction
    (0.0, -1.0, 0.05, "not supported", "reversed"),
    (0.0, 0.0, 0.02, "not supported", "absent"),
    (0.0, 1.5, 3.0, "inconclusive", None),  # seeds disagree: no side can be taken
])
def test_the_c2_rule_on_crafted_gaps(init, final, noise, verdict, label):
    rule = learned_rule(0.2)
    est = gap_estimates(_gap(init, final, noise=noise), 0.95)
    assert rule.decide(est).verdict == verdict
    found = rule.label(est)
    assert (found is None) if label is None else found.startswith(label)


def _runs(familiar: np.ndarray) -> list[dict]:
    """Runs whose familiar half A and half B both follow ``familiar`` (seeds, steps)."""
    out = []
    for row in familiar:
        records = [{"step": j, "sets": {"familiar": {"stats": {"s": {"top5_energy": [v, 1.0, v, v]}}}}} for j, v in enumerate(row)]
        out.append({"steps": list(range(len(row))), "records": records})
    return out


def test_the_u_rule_on_crafted_trajectories():
    rng = np.random.default_rng(1)
    hump = np.array([0.2, 0.5, 0.6, 0.4, 0.3]) + 0.01 * rng.standard_normal((4, 5))
    est, peaks = u_estimates(_runs(hump), "s", "top5_energy", 0.95)
    assert U_RULE.decide(est).verdict == "supported" and peaks == [2, 2, 2, 2]
    rising = np.array([0.2, 0.3, 0.4, 0.5, 0.6]) + 0.01 * rng.standard_normal((4, 5))
    est, _ = u_estimates(_runs(rising), "s", "top5_energy", 0.95)
    assert U_RULE.decide(est).verdict == "not supported"  # peak below the end: no densification


def test_quick_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(["run", "sparsity-emergence", "--preset", "quick", "--out", out], capsys)
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())["studies"]["sparsity-emergence"]
    assert result["metrics"]["steps"][0] == 0
    assert {f["name"] for f in result["figures"]} >= {"trajectory", "gap", "accuracy", "layers", "metrics"}
    assert len(result["claims"]) == 3 and all(c["id"] == "C2" for c in result["claims"])
    assert all(c["verdict"] in ("supported", "not supported", "inconclusive") for c in result["claims"])
    assert all(c["rule"] and c["control"] for c in result["claims"])
    trajectories = sorted((out / "artefacts").glob("sparsity-emergence-*/result.json"))
    assert len(trajectories) == 2  # one cached trajectory per seed


def _cfg(**study):
    run = resolve_config("quick", overrides=tuple(f"{STUDY}{k}={json.dumps(v)}" for k, v in study.items()))
    from taskloc.studies.context import study_settings

    cfg = study_settings(run, "sparsity-emergence", SparsityEmergenceConfig)
    SparsityEmergenceStudy().check(cfg, run)


@pytest.mark.parametrize("setting, value, named", [
    ("seeds", 1, "seeds"),
    ("metric", "l1_norm", "metric"),
    ("metric", "eff_rank", "metric"),  # the paper's name under the taskloc convention
    ("held_out", "add", "held_out"),
    ("layer", 7, "layer"),
    ("model", {"n_head": 3}, "model.n_head"),
    ("model", {"vocab_size": 10}, "model"),
    ("init_margin", 0, "init_margin"),
    ("checkpoints", 1, "checkpoints"),
])
def test_bad_settings_name_the_key(setting, value, named):
    with pytest.raises(ConfigError, match=f"studies.sparsity-emergence.{named}"):
        _cfg(**{setting: value})


def test_bad_settings_from_the_cli_end_in_one_line(tmp_path, capsys):
    code, _, err = cli(["run", "sparsity-emergence", "--preset", "quick", "--out", tmp_path / "x", "--set", f"{STUDY}metric=l1_norm"], capsys)
    assert code == 2 and "studies.sparsity-emergence.metric" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    code, _, err = cli(["run", "sparsity-emergence", "--preset", "quick", "--out", tmp_path / "y", "--set", f"{STUDY}sites=[\"blocks.*.hook_rsid\"]"], capsys)
    assert code == 2 and "hook_rsid" in err
