"""`taskloc activations`: numbers against a direct computation on full activations, last token =
last non-padding position (TinyLM, HF Llama, BERT), outputs, and bad input (one line, exit 2, no files)."""
import json

import numpy as np
import pytest
import torch

from cli_runner import cli
from taskloc.activations.analysis import analyse, difference_coverage, localise
from taskloc.activations.profile import check_sites, profile_activations
from taskloc.activations.prompts import read_prompts
from taskloc.activations.reducers import RunningMoments
from taskloc.hooks import capture
from taskloc.io.atomic import write_safetensors
from taskloc.metrics import metric_profile
from taskloc.models import load_model
from taskloc.studies.stats import spearman

SITES = ["blocks.*.hook_resid_post", "blocks.0.mlp.hook_post"]
# Two-sided 95% Student t quantiles t_{0.975, df}, from a printed table (not from taskloc).
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836, 6: 2.446911851, 7: 2.364624252}
# Lengths differ inside each level, so every batch is padded.
ROWS = [("A:1+2=", 1), ("A:12+3=", 1), ("A:1+23456=", 1), ("S:31>", 2), ("S:314159>", 2), ("S:3141592653>", 2),
        ("M:7*8=", 3), ("M:77*88=", 3), ("M:777*8888=", 3)]


def _welch(a, b):
    """mean(b) - mean(a) with Welch's interval written out: Welch-Satterthwaite df, rounded down."""
    ua, ub = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = int((ua + ub) ** 2 / (ua**2 / (a.size - 1) + ub**2 / (b.size - 1)))
    diff, half = b.mean() - a.mean(), T975[df] * np.sqrt(ua + ub)
    return diff, diff - half, diff + half


def _write_prompts(path, rows=ROWS, labels=True):
    with open(path, "w") as f:
        for i, (text, d) in enumerate(rows):
            row = {"text": text, "difficulty": d}
            if labels:
                row["label"] = "familiar" if i % 2 else "unfamiliar"
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def tiny_path(tiny_model, tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tiny_model.state_dict(), {"taskloc": json.dumps({"kind": "base", "model": tiny_model.cfg.to_dict()})})
    return path


@torch.no_grad()
def _direct(loaded, texts, sites):
    """Each prompt alone (no padding): full activations -> metric_profile of the last row and the
    mean over rows of every row's metrics; plus the last-token and all-token rows themselves."""
    out = {s: {"last": [], "all": [], "last_rows": [], "all_rows": []} for s in sites}
    for text in texts:
        ids = torch.tensor([loaded.encode(text)])
        with capture(loaded.model, sites) as acts:
            loaded.model(ids)
        for s in sites:
            x = acts[s][0].to(torch.float64)  # (T, D): every token of this prompt
            last, every = metric_profile(x[-1:]), metric_profile(x)
            out[s]["last"].append([float(v[0]) for v in last.values()])
            out[s]["all"].append([float(v.mean()) for v in every.values()])
            out[s]["last_rows"].append(x[-1])
            out[s]["all_rows"].append(x)
    return out


def test_numbers_equal_a_direct_computation_on_full_activations(tiny_path, tmp_path):
    prompts = read_prompts(_write_prompts(tmp_path / "p.jsonl"))
    loaded = load_model(tiny_path, "cpu")
    sites = check_sites(loaded, SITES)
    prof = profile_activations(loaded, prompts, sites, batch_size=2)  # batches of 2 within a level: padded
    direct = _direct(loaded, prompts.texts, sites)
    names = list(metric_profile(torch.ones(1, 4)))
    assert prof.metric_names == names
    for s in sites:
        for mode in ("last", "all"):
            np.testing.assert_allclose(prof.values[mode][s], np.array(direct[s][mode]), rtol=1e-6, atol=1e-6)
    doc = analyse(prof, n_perm=200)
    s0 = sites[0]
    j = names.index("gini")
    # The analysis is checked against the profile it was given (already matched to the direct
    # computation above at 1e-6), so its own arithmetic can be held to 1e-9.
    gini = np.asarray(prof.values["last"][s0], dtype=np.float64)[:, j]
    rec = doc["sites"][0]["modes"]["last"]["gini"]
    for i, level in enumerate(rec["by_level"]):
        x = gini[3 * i: 3 * i + 3]
        assert level["n"] == 3 and level["mean"] == pytest.approx(x.mean(), abs=1e-9)
        half = T975[2] * x.std(ddof=1) / np.sqrt(3)  # Student t, 2 df, from the printed table
        assert (level["lo"], level["hi"]) == (pytest.approx(x.mean() - half, abs=1e-9), pytest.approx(x.mean() + half, abs=1e-9))
    assert rec["spearman"]["rho"] == pytest.approx(spearman(prompts.difficulty, gini, n_perm=200).statistic, abs=1e-9)
    fam = [i for i in range(9) if i % 2]
    unf = [i for i in range(9) if not i % 2]
    for got, low, high in ((rec["change"], gini[:3], gini[6:]), (rec["by_label"]["unfamiliar_minus_familiar"], gini[fam], gini[unf])):
        diff, lo, hi = _welch(low, high)
        assert got["diff"] == pytest.approx(diff, abs=1e-9)
        assert (got["lo"], got["hi"]) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))
        assert got["achieved"] == difference_coverage(low.size, high.size, 0.95)  # measured at these sizes (3 vs 3, 4 vs 5)
        assert got["short"] is bool(got["achieved"] < 0.95 - 2 * np.sqrt(0.95 * 0.05 / 4000))
    assert [m["n"] for m in doc["interval"]["coverage"]["mean"]] == [3, 4, 5]
    # Localisation from running moments = the same from the stacked full activations.
    for mode, key in (("last", "last_rows"), ("all", "all_rows")):
        rows = direct[s0][key]
        # float64 reference; the profile's rows come from padded batches whose float32 rounding
        # differs from these unpadded rows by ~1e-6 relative, so d is held to 1e-5.
        low = (torch.stack(rows[:3]) if mode == "last" else torch.cat(rows[:3])).double()  # (N_low, D)
        high = (torch.stack(rows[6:]) if mode == "last" else torch.cat(rows[6:])).double()
        pooled = (((low.shape[0] - 1) * low.var(0) + (high.shape[0] - 1) * high.var(0)) / (low.shape[0] + high.shape[0] - 2)).sqrt()
        d = ((high.mean(0) - low.mean(0)) / pooled).numpy()
        loc = doc["sites"][0]["localisation"][mode]
        assert loc["shift"] == pytest.approx(float(np.sqrt((d**2).mean())), rel=1e-5)
        top = loc["top_dims"][0]
        assert top["dim"] == int(np.argmax(np.abs(d))) and top["d"] == pytest.approx(float(d[top["dim"]]), rel=1e-5)
        assert loc["n_lowest"] == low.shape[0] and loc["n_highest"] == high.shape[0]


def test_localise_finds_a_planted_dimension():
    gen = torch.Generator().manual_seed(0)
    low, high = RunningMoments(), RunningMoments()
    a, b = torch.randn(200, 16, generator=gen, dtype=torch.float64), torch.randn(200, 16, generator=gen, dtype=torch.float64)
    b[:, 5] += 3.0  # only dimension 5 moves
    low.add_rows(a)
    high.add_rows(b)
    loc = localise(low, high, top=3)
    assert loc["top_dims"][0]["dim"] == 5 and loc["top_dims"][0]["d"] > 2.5
    assert abs(loc["top_dims"][1]["d"]) < loc["null_max"] * 1.5  # the rest look like noise


def test_cli_on_tinylm_writes_json_and_html(tiny_path, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(["activations", tiny_path, "--prompts", _write_prompts(tmp_path / "p.jsonl"), "--out", out,
                        "--permutations", "200", "--convention", "paper"], capsys)
    assert code == 0, err
    doc = json.loads((out / "activations.json").read_text())
    assert doc["convention"] == "paper" and "eff_rank" in doc["metrics"] and doc["prompts"]["n"] == 9
    assert [s["site"] for s in doc["sites"]] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert doc["localisation"]["compares"] == "lowest level 1 vs highest level 3"
    assert "Spearman rho with difficulty" in err and "Localisation" in err
    page = (out / "activations.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<img") >= 6


def test_many_difficulties_are_binned_by_quantile(tiny_path, tmp_path):
    rows = [(f"A:{i}+1=", float(i)) for i in range(12)]
    prompts = read_prompts(_write_prompts(tmp_path / "p.jsonl", rows, labels=False))
    loaded = load_model(tiny_path, "cpu")
    prof = profile_activations(loaded, prompts, check_sites(loaded, ["blocks.1.hook_resid_post"]), max_levels=3,
                               all_tokens=False)
    assert prof.levels.names == ["0-3", "4-7", "8-11"] and prof.modes == ("last",)


# -- Hugging Face folders with their own tokenizer -------------------------------------------------

def _char_tokenizer(transformers):
    from tokenizers import Tokenizer, models

    chars = [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *chars])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # one token per character
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _hf_folder(family, path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tok = _char_tokenizer(transformers)
    small = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                 max_position_embeddings=64, pad_token_id=0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=1, bos_token_id=None, eos_token_id=1, **small))
    else:
        model = transformers.BertForMaskedLM(transformers.BertConfig(**small))
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_hf_folder_last_token_is_the_last_non_padding_position(family, tmp_path, capsys):
    folder = _hf_folder(family, tmp_path / family)
    prompts = read_prompts(_write_prompts(tmp_path / "p.jsonl"))
    loaded = load_model(folder, "cpu")
    sites = check_sites(loaded, ["blocks.*.hook_resid_post", "ln_final.hook_normalized"])
    prof = profile_activations(loaded, prompts, sites, batch_size=3)  # a whole level per batch: padded
    direct = _direct(loaded, prompts.texts, sites)  # one prompt at a time: its last token is position -1
    for s in sites:
        for mode in ("last", "all"):
            np.testing.assert_allclose(prof.values[mode][s], np.array(direct[s][mode]), rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    code, _, err = cli(["activations", folder, "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "out",
                        "--permutations", "100", "--last-token-only"], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "activations.json").read_text())
    assert doc["model"]["kind"] == family and list(doc["sites"][0]["modes"]) == ["last"]


# -- bad input: one line, exit code 2, nothing written ----------------------------------------------


@pytest.mark.parametrize("content, expected", [
    ("", "holds no prompts"),
    ("\n  \n", "holds no prompts"),
    ('{"text": "A:1+2=", "difficulty": 1}\nnot json\n', "line 2 is not JSON"),
    ('[1, 2]\n', "not an object"),
    ('{"text": "A:1+2="}\n', "missing the field(s) difficulty"),
    ('{"difficulty": 2}\n', "missing the field(s) text"),
    ('{"text": "A:1+2=", "difficulty": "hard"}\n', 'difficulty must be a number, got "hard"'),
    ('{"text": "A:1+2=", "difficulty": true}\n', "difficulty must be a number"),
    ('{"text": "A:1+2=", "difficulty": NaN}\n', "finite number"),
    ('{"text": "A:1+2=", "difficulty": 1, "label": "odd"}\n', "label must be one of familiar, unfamiliar"),
    ('{"text": "", "difficulty": 1}\n', "non-empty string"),
])
def test_bad_prompts_file(content, expected, tiny_path, tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    out = tmp_path / "out"
    code, _, err = cli(["activations", tiny_path, "--prompts", path, "--out", out], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--sites", "blocks.*.hook_resid_psot"], "did you mean"),
    (["--sites", "blocks.0.attn.hook_pattern"], "attention probabilities"),
    (["--convention", "numpy"], "unknown metric convention"),
    (["--batch-size", "0"], "at least 1"),
    (["--levels", "1"], "at least 2 difficulty levels"),
])
def test_bad_options(args, expected, tiny_path, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(["activations", tiny_path, "--prompts", _write_prompts(tmp_path / "p.jsonl"), "--out", out, *args], capsys)
    assert code == 2 and expected in err.lower() and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_missing_prompts_file_and_too_long_prompt(tiny_path, tmp_path, capsys):
    code, _, err = cli(["activations", tiny_path, "--prompts", tmp_path / "nope.jsonl"], capsys)
    assert code == 2 and "does not exist" in err
    long = _write_prompts(tmp_path / "long.jsonl", [("A:" + "1" * 80 + "=", 1)], labels=False)
    code, _, err = cli(["activations", tiny_path, "--prompts", long, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "more than the model's context of 64" in err and not (tmp_path / "out").exists()
