import json

import pytest
import torch

from cli_runner import cli
from taskloc.errors import ConfigError
from taskloc.studies.fast_slow import FastSlowConfig, parse_cell

SMALL = ["--set", "pretrain.steps=20", "--set", "eval.examples=8"]


def test_cells_and_settings_are_checked():
    task, level = parse_cell("sort:3", "x")
    assert (task.name, level) == ("sort", 3)
    for bad, says in (("sort", "TASK:LEVEL"), ("sort:9", "no level 9"), ("sortt:3", "sort")):
        with pytest.raises(Exception, match=says):
            parse_cell(bad, "studies.fast-slow.stream[0]")
    with pytest.raises(ConfigError, match="at least 3"):
        FastSlowConfig(stream=["sort:3", "add:3"])
    with pytest.raises(ConfigError, match="seeds"):
        FastSlowConfig(seeds=1)


def test_bad_stream_is_one_line_and_no_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(["run", "fast-slow", "--preset", "quick", "--out", out,
                        "--set", 'studies.fast-slow.stream=["sort:3", "add:9", "hop:3"]'], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "studies.fast-slow.stream" in err and "'add' has no level 9" in err and not out.exists()


def test_study_end_to_end_on_the_quick_preset(tmp_path, capsys):
    out = tmp_path / "fs"
    code, _, err = cli(["run", "fast-slow", "--preset", "quick", "--out", out, *SMALL], capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    claims = [c for c in doc["claims"] if c["study"] == "fast-slow"]
    assert [c["id"] for c in claims] == ["C5", "C5"]
    # the quick base is not competent: no verdict may be asserted on it
    assert all(c["verdict"] == "inconclusive" and "downgraded" in c["reason"] for c in claims)
    fs = doc["studies"]["fast-slow"]
    assert {f["name"] for f in fs["figures"]} == {"stream", "adaptation", "drift", "delta", "plasticity"}
    runs = fs["metrics"]["runs"]
    assert sorted((r["kind"], r["seed"]) for r in runs) == sorted((k, s) for k in ("two-channel", "slow-only", "fast-only") for s in (0, 1))
    for r in runs:
        assert len(r["curves"]) == 3 and [p[0] for p in r["curves"][0]] == [0, 2, 4]  # 4 steps per task, cycles of 2
        if r["kind"] == "fast-only":  # prompts only: the weights never move
            assert r["size"]["relative_norm"] == 0.0 and r["drift"] == pytest.approx(0.0, abs=1e-9)
        else:
            assert r["size"]["relative_norm"] > 0 and r["prompts"] != [] and r["drift"] > 0
        if r["kind"] == "slow-only":
            assert r["prompts"] == ["", "", ""]
    paired = fs["metrics"]["paired"]
    assert set(paired) == {"speed_gain", "drift_saved", "plasticity_gain", "forgetting_saved"}
    assert all(len(v["per_seed"]) == 2 for v in paired.values())


hf = pytest.importorskip("transformers")


def test_the_learner_runs_on_a_hugging_face_model(tmp_path, capsys):
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>"] + [chr(c) for c in range(32, 127)])}
    tok = hf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")),
                                     pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = hf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=64,
                        bos_token_id=1, eos_token_id=1, pad_token_id=0)
    folder = tmp_path / "gpt2"
    hf.GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "run"
    capsys.readouterr()
    code, _, err = cli(["run", "fast-slow", "--preset", "quick", "--model", folder, "--out", out, *SMALL], capsys)
    assert code == 0, err
    fs = json.loads((out / "results.json").read_text())["studies"]["fast-slow"]
    two = [r for r in fs["metrics"]["runs"] if r["kind"] == "two-channel"]
    assert len(two) == 2 and all(r["size"]["relative_norm"] > 0 for r in two)


def _records(two_speed, slow_speed, two_drift, slow_drift):
    """Synthetic learners on 3 seeds: two-channel and slow-only reach the given accuracies."""
    from taskloc.studies.fast_slow import Record

    size = {"relative_norm": 0.1, "moved_share": 0.5, "top1_energy": 0.1, "gini": 0.5}
    out = []
    for seed in range(3):
        jitter = 0.01 * seed
        for kind, acc, drift in (("two-channel", two_speed, two_drift), ("slow-only", slow_speed, slow_drift), ("fast-only", 0.0, 0.0)):
            a = acc + jitter if acc else 0.0
            curves = [[(0, 0.0, 0.0), (2, a, 0.1), (4, a, 0.2)] for _ in range(3)]
            plast = [0.0, a, a]
            out.append(Record(kind, seed, curves, ["", "", ""], [a] * 3, [a / 2] * 3 if kind == "slow-only" else [a] * 3,
                              drift + jitter, 0.0, a, plast, dict(size)))
    return out


@pytest.mark.parametrize("two,slow,verdicts", [
    (0.6, 0.3, ("supported", "supported")),  # faster, less drift, keeps plasticity, forgets less
    (0.3, 0.6, ("not supported", "not supported")),
    (0.0, 0.0, ("inconclusive", "inconclusive")),  # nothing learned by anyone: no comparison, never 'not supported'
])
def test_verdicts_follow_the_paired_differences(two, slow, verdicts):
    from taskloc.studies.base import StudyResult
    from taskloc.studies.fast_slow import FastSlowStudy
    from taskloc.train import TrainConfig

    cfg = FastSlowConfig(segment=TrainConfig(steps=4, batch_size=8), cycle_steps=2, plasticity=TrainConfig(steps=2, eval_every=1))
    stream = [parse_cell(c, "s") for c in cfg.stream]
    drift_two, drift_slow = (0.5, 1.0) if two >= slow else (1.0, 0.5)
    result = StudyResult()
    FastSlowStudy()._report(cfg, stream, _records(two, slow, drift_two, drift_slow), [(0.0, [0.0, 0.0, 0.0])] * 3, result)
    assert tuple(c.verdict for c in result.claims) == verdicts
