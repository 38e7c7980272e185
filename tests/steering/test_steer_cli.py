"""`taskloc steer extract` / `generate`: a round trip, and bad input as one line with exit code 2."""
import json

import pytest
import torch

from cli_runner import cli
from taskloc.io.atomic import write_safetensors
from taskloc.models import ModelConfig, TinyLM
from taskloc.tasks import VOCAB_SIZE

PAIRS = [{"prompt": f"Q:{a}+{b}=", "positive": f"{(a + b) % 10}", "negative": f"{a}+{b}={(a + b) % 10}"} for a, b in [(1, 2), (3, 4), (5, 6)]]


def _save(model, path):
    write_safetensors(path, model.state_dict(), {"taskloc": json.dumps({"kind": "base", "model": model.cfg.to_dict()})})
    return path


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def model_file(tiny_model, tmp_path):
    return _save(tiny_model, tmp_path / "model.safetensors")


def test_extract_then_generate(model_file, tmp_path, capsys):
    pairs = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    code, _, err = cli(["steer", "extract", model_file, "--pairs", pairs, "--layer", "1"], capsys)
    assert code == 0 and "3 pairs" in err
    vector = tmp_path / "pairs.L1.safetensors"
    assert vector.exists()
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q:2+2="}, {"prompt": "Q:12+2="}])
    code, out, err = cli(["steer", "generate", model_file, "--vector", vector, "--prompts", prompts, "--gamma", "0"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["prompt"] for r in rows] == ["Q:2+2=", "Q:12+2="] and all(r["tokens"] >= 1 for r in rows)
    code, out, err = cli(["steer", "generate", model_file, "--vector", vector, "--prompts", prompts, "--kl-budget", "1e-4",
                          "--out", tmp_path / "o.jsonl"], capsys)
    assert code == 0 and "from a KL budget" in err and len((tmp_path / "o.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("rows, message", [
    ([], "is empty"),
    ([PAIRS[0], {"prompt": "Q:1=", "positive": "1"}], "line 2: field 'negative' is missing"),
    ([PAIRS[0], {**PAIRS[1], "positive": ""}], "line 2: field 'positive' is empty"),
    ([PAIRS[0], "not json"], "line 2 is not JSON"),
    ([PAIRS[0]], "at least 2 pairs"),
])
def test_bad_pairs_files(model_file, tmp_path, capsys, rows, message):
    pairs = _jsonl(tmp_path / "pairs.jsonl", rows)
    code, _, err = cli(["steer", "extract", model_file, "--pairs", pairs, "--layer", "0"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.L0.safetensors"))  # nothing written


def test_missing_pairs_file_and_layer_out_of_range(model_file, tmp_path, capsys):
    code, _, err = cli(["steer", "extract", model_file, "--pairs", tmp_path / "none.jsonl", "--layer", "0"], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    pairs = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    code, _, err = cli(["steer", "extract", model_file, "--pairs", pairs, "--layer", "2"], capsys)
    assert code == 2 and "layer 2 is out of range" in err and len(err.strip().splitlines()) == 1


def test_vector_from_a_model_of_another_width(model_file, tmp_path, capsys):
    torch.manual_seed(1)
    wide = _save(TinyLM(ModelConfig(vocab_size=VOCAB_SIZE, n_layer=2, n_head=2, d_model=48, d_mlp=64)), tmp_path / "wide.safetensors")
    pairs = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    assert cli(["steer", "extract", wide, "--pairs", pairs, "--layer", "0", "--out", tmp_path / "w.safetensors"], capsys)[0] == 0
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q:2+2="}])
    code, _, err = cli(["steer", "generate", model_file, "--vector", tmp_path / "w.safetensors", "--prompts", prompts,
                        "--gamma", "1"], capsys)
    assert code == 2 and "has 48 entries but the model's hidden size is 32" in err and len(err.strip().splitlines()) == 1


def test_generate_needs_exactly_one_strength(model_file, tmp_path, capsys):
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q:2+2="}])
    code, _, err = cli(["steer", "generate", model_file, "--vector", tmp_path / "v.safetensors", "--prompts", prompts], capsys)
    assert code == 2 and "exactly one of --gamma G or --kl-budget B" in err
    code, _, err = cli(["steer", "generate", model_file, "--vector", tmp_path / "v.safetensors", "--prompts", prompts,
                        "--gamma", "1"], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
