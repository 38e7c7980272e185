"""`taskloc merge` and `taskloc cores` through the CLI's main(): outputs in the base's format
(tiny HF Llama folders built offline load with from_pretrained), and bad input as one line, exit
code 2 and no output."""
import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cli_runner import cli
from taskloc.deltas import global_topk_mask
from taskloc.merge import groups_of, merge_models

transformers = pytest.importorskip("transformers")


def _cli(args, capsys):
    return cli(args, capsys)


def _one_line_error(code, err, pattern):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def _llama(seed: int, **overrides):
    torch.manual_seed(seed)
    sizes = dict(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=32)
    cfg = transformers.LlamaConfig(**{**sizes, **overrides})
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A base Llama folder and three fine-tunes (perturbed copies), plus their state dicts."""
    root = tmp_path_factory.mktemp("hf")
    base = _llama(0)
    base.save_pretrained(root / "base")
    sds = {"base": {n: v.clone() for n, v in base.state_dict().items()}}
    for i, name in enumerate(["a", "b", "c"], start=1):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g) ** 3)
        base.save_pretrained(root / name)
        sds[name] = {n: v.clone() for n, v in base.state_dict().items()}
        base.load_state_dict(sds["base"])
    return root, sds


def _saved(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("method, flags", [
    ("task_arithmetic", ["--lambda", "0.6"]), ("ties", ["--k", "30%"]), ("ties", ["--k", "10", "--trim", "global"]),
    ("dare_linear", ["--p", "50", "--seed", "3"]), ("dare_ties", ["--p", "20%"]), ("core_isolation", ["--p", "2%"]),
])
def test_merged_hf_folder_loads_with_from_pretrained(hf, tmp_path, capsys, method, flags):
    root, sds = hf
    out = tmp_path / "merged"
    code, _, err = _cli(["merge", root / "base", root / "a", root / "b", root / "c", "--method", method, *flags, "--out", out], capsys)
    assert code == 0, err
    assert (out / "config.json").exists() and (out / "generation_config.json").exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    options = dict(zip([f.lstrip("-").replace("lambda", "lambda_") for f in flags[::2]], flags[1::2]))
    want = merge_models(sds["base"], [sds["a"], sds["b"], sds["c"]], method=method, options=options).state_dict
    written = _saved(out)
    assert set(written) == set(_saved(root / "base"))
    for name, value in written.items():
        assert torch.equal(value, want[name]), name
        if name in loaded:
            assert torch.equal(loaded[name], want[name]), name
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        record = json.loads(f.metadata()["taskloc_merge"])
    assert record["method"] == method and len(record["models"]) == 4


def test_slerp_on_a_sharded_folder_keeps_the_shards(tmp_path, capsys):
    for i, name in enumerate(["base", "a"]):
        _llama(i).save_pretrained(tmp_path / name, max_shard_size="8KB")
    out = tmp_path / "merged"
    code, _, err = _cli(["merge", tmp_path / "base", tmp_path / "a", "--method", "slerp", "--t", "0.3", "--out", out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in (tmp_path / "base").glob("*.safetensors"))
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    want = merge_models(_llama(0).state_dict(), [_llama(1).state_dict()], method="slerp", options={"t": 0.3}).state_dict
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=0)


def test_safetensors_file_in_file_out_with_a_lora_adapter(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    base = {"layer.q.weight": torch.randn(6, 4, generator=g), "layer.k.weight": torch.randn(6, 4, generator=g)}
    tuned = {n: v + 0.1 * torch.randn(v.shape, generator=g) for n, v in base.items()}
    save_file(base, str(tmp_path / "base.safetensors"), metadata={"step": "7"})
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    a, b = torch.randn(2, 4, generator=g), torch.randn(6, 2, generator=g)
    save_file({"base_model.model.layer.q.lora_A.weight": a, "base_model.model.layer.q.lora_B.weight": b}, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    out = tmp_path / "merged.safetensors"
    code, _, err = _cli(["merge", tmp_path / "base.safetensors", tmp_path / "tuned.safetensors", adapter,
                         "--method", "task_arithmetic", "--weights", "0.5,1", "--out", out], capsys)
    assert code == 0, err
    got = load_file(str(out))
    lora = {"layer.q.weight": b @ a * 2.0, "layer.k.weight": torch.zeros(6, 4)}
    for n in base:
        torch.testing.assert_close(got[n], base[n] + 0.5 * (tuned[n] - base[n]) + lora[n], rtol=1e-6, atol=1e-6)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["step"] == "7"


def test_cores_prints_the_overlap_matrix_and_groups_and_writes_json(hf, tmp_path, capsys):
    root, _ = hf
    code, out, err = _cli(["cores", root / "base", root / "a", root / "b", root / "a", "--p", "1%"], capsys)
    _one_line_error(code, err, r"is given twice \(as model 1 and as model 3\); give each model once\.")
    code, out, err = _cli(["cores", root / "base", root / "a", root / "b", root / "c", "--p", "5%", "--tau", "0.05",
                           "--json", tmp_path / "cores.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "cores.json").read_text())
    base = _saved(root / "base")
    masks = [global_topk_mask({n: _saved(root / t)[n] - v for n, v in base.items()}, 0.05) for t in "abc"]
    inter = [[sum(int((mi[n] & mj[n]).sum()) for n in base) for mj in masks] for mi in masks]
    n = sum(v.numel() for v in base.values())
    assert report["n"] == n and report["sizes"] == [round(0.05 * n)] * 3 and report["intersections"] == inter
    jaccard = [[inter[i][j] / (inter[i][i] + inter[j][j] - inter[i][j]) for j in range(3)] for i in range(3)]
    assert all(report["jaccard"][i][j] == pytest.approx(jaccard[i][j]) for i in range(3) for j in range(3))
    assert report["groups"] == groups_of(jaccard, 0.05)
    assert "Jaccard overlap" in out and "group 1:" in out


# --- bad input ---------------------------------------------------------------------------------------

def _other_shape(tmp_path):
    _llama(5, intermediate_size=32).save_pretrained(tmp_path / "wide")
    return tmp_path / "wide", (r"tensor 'model\.layers\.0\.mlp\.down_proj\.weight' has shape \(16, 24\) in the base .* "
                               r"but \(16, 32\) in .*wide; merge models of one architecture\.")


def _other_arch(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=32)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "qwen")
    return tmp_path / "qwen", r"qwen is a qwen2 model but the base .* is a llama model; merge models of one architecture\."


def _fewer_layers(tmp_path):
    _llama(5, num_hidden_layers=1).save_pretrained(tmp_path / "short")
    return tmp_path / "short", r"short lacks \d+ tensors of the base .*'model\.layers\.1\..*; merge models of one architecture\."


@pytest.mark.parametrize("make", [_other_shape, _other_arch, _fewer_layers])
def test_models_of_another_architecture_are_refused(hf, tmp_path, capsys, make):
    root, _ = hf
    other, pattern = make(tmp_path)
    capsys.readouterr()  # transformers' own save messages
    out = tmp_path / "merged"
    code, _, err = _cli(["merge", root / "base", root / "a", other, "--method", "ties", "--out", out], capsys)
    _one_line_error(code, err, pattern)
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


@pytest.mark.parametrize("args, pattern", [
    (["a", "a"], r"a is given twice \(as model 1 and as model 2\); give each model once\."),
    (["base"], r"base is given twice \(as the base and as model 1\); give each model once\."),
    (["a", "--method", "tiez"], r"unknown merge method 'tiez'\. Did you mean 'ties'\?"),
    (["a", "--method", "core_isolation", "--p", "0"], r"--p 0 is out of range: it is a percent in \(0, 100\]\."),
    (["a", "--method", "core_isolation", "--p", "101%"], r"--p 101% is out of range: it is a percent in \(0, 100\]\."),
    (["a", "--method", "ties", "--k", "-5"], r"--k -5 is out of range: it is a percent in \(0, 100\]\."),
    (["a", "--method", "dare_ties", "--p", "100"], r"--p 100 is out of range: it is a percent in \[0, 100\)\."),
    (["a", "b", "--method", "slerp"], r"--method slerp interpolates between two models \(BASE and one other\) but got 2 after the base\."),
    (["a", "--method", "slerp", "--k", "5"], r"--k does not apply to --method slerp; it takes --t\."),
    (["a", "--method", "ties", "--trim", "layer"], r"--trim 'layer' is not one of tensor, global\."),
])
def test_bad_merge_input_is_one_line_exit_2_and_no_output(hf, tmp_path, capsys, args, pattern):
    root, _ = hf
    models = [root / a for a in args if not a.startswith("-") and a in ("a", "b", "base")]
    rest = args[len(models):]
    if "--method" not in rest:
        rest = [*rest, "--method", "ties"]
    out = tmp_path / "merged"
    code, _, err = _cli(["merge", root / "base", *models, *rest, "--out", out], capsys)
    _one_line_error(code, err, pattern)
    assert list(tmp_path.iterdir()) == []


def test_nan_in_a_model_names_the_tensor_and_leaves_no_output(hf, tmp_path, capsys):
    root, _ = hf
    broken = dict(_saved(root / "a"))
    broken["model.norm.weight"] = torch.full_like(broken["model.norm.weight"], float("nan"))
    (tmp_path / "broken").mkdir()
    save_file(broken, str(tmp_path / "broken" / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "merged"
    code, _, err = _cli(["merge", root / "base", tmp_path / "broken", "--method", "task_arithmetic", "--out", out], capsys)
    _one_line_error(code, err, r"tensor 'model\.norm\.weight' holds NaN or Inf in .*broken")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
