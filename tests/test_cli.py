"""Bad input ends with one clear line on stderr, exit code 2, no traceback, and no run directory."""
import re

import pytest

from taskloc.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.err


@pytest.mark.parametrize("args, message", [
    (["base-modle", "--preset", "quick"], r"unknown study 'base-modle'\. Did you mean 'base-model'"),
    (["--preset", "quick", "--set", 'data.tasks=["add", "sortt"]'], r"unknown task 'sortt'\. Did you mean 'sort'"),
    (["--preset", "quick", "--set", "pretrain.steps=abc"], r"config value pretrain\.steps='abc' has the wrong type: expected int"),
    (["--preset", "quick", "--set", "pretrain.stepz=10"], r"unknown config key 'pretrain\.stepz'\. Did you mean 'pretrain\.steps'"),
    (["--preset", "quick", "--set", "model.d_model=31"], r"model\.d_model=31 is not divisible by model\.n_head=2"),
    (["--preset", "quik"], r"unknown preset 'quik'\. Did you mean 'quick'"),
    (["--preset", "quick", "--set", "studies.base-model.competence=2.0"], r"competence=2\.0 must lie in \(0, 1\]"),
    (["--preset", "quick", "--set", "studies.base-modle.competence=0.5"], r"unknown study 'base-modle'"),
    (["--preset", "quick", "--set", "model=5"], r"config value model must be a table of settings"),
    (["--preset", "quick", "--set", "data.weights.add=NaN"], r"is not a finite number"),
    (["--preset", "quick", "--set", "pretrain.lr=Infinity"], r"is not a finite number"),
    (["--preset", "quick", "--set", "pretrain.warmup=-5"], r"warmup=-5 must be >= 0"),
    (["--preset", "quick", "--set", "preset=full"], r"'preset' is chosen with --preset"),
    (["weight-delta", "--preset", "quick", "--set", "studies.weight-delta.target_level=2"], r"target_level=2 is a trained level"),
    (["weight-delta", "--preset", "quick", "--set", "studies.weight-delta.control_seeds=3"], r"control_seeds=3 must lie between 1 and seeds=2"),
    (["weight-delta", "--preset", "quick", "--set", "studies.weight-delta.regime_seeds=3"], r"regime_seeds=3 must lie between 0 \(= seeds\)"),
    (["weight-delta", "--preset", "quick", "--set", 'studies.weight-delta.regimes=["adamw", "loar"]'], r"Did you mean 'lora'"),
    (["weight-delta", "--preset", "quick", "--set", 'studies.weight-delta.regimes=["adamw", "adamw"]'], r"names a regime twice"),
    (["weight-delta", "--preset", "quick", "--set", 'studies.weight-delta.regimes=["lora", "adamw"]'], r"put adamw, small or sgd-frozen first"),
    (["weight-delta", "--preset", "quick", "--set", 'studies.weight-delta.tasks=["add", "hopp"]'], r"unknown task 'hopp'"),
    (["weight-delta", "--preset", "quick", "--set", "studies.weight-delta.support_fraction=0.05"], r"support_fraction=0.05 must be one of graft_fractions"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, err = run_cli(["run", *args, "--out", str(out)], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_malformed_jsonl_task_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "target": "y"}\n{oops\n')
    out = tmp_path / "run"
    code, err = run_cli(["run", "--preset", "quick", "--out", str(out), "--set", f'data.tasks=["jsonl:{bad}"]'], capsys)
    assert code == 2 and f"{bad}:2 is not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_report_of_missing_run(tmp_path, capsys):
    code, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "has no results.json" in err


def test_studies_and_tasks_listings(capsys):
    main(["studies"])  # listings go to stdout; progress and errors to stderr
    assert "base-model" in capsys.readouterr().out
    main(["tasks"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("add", "sort", "reverse", "hop", "copy", "trace", "arith"))


def test_out_pointing_at_a_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    code, err = run_cli(["run", "--preset", "quick", "--out", str(target)], capsys)
    assert code == 2 and "is a file; pass a directory" in err
    assert target.read_text() == "x"


@pytest.mark.parametrize("content, message", [(b"{}", "is not a taskloc results file"), (b"[1]", "is not a taskloc results file"),
                                              (b"\xff\xfe", "is not valid JSON")])
def test_report_of_a_damaged_results_file(tmp_path, capsys, content, message):
    (tmp_path / "results.json").write_bytes(content)
    code, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and message in err and not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("content, message", [(b'{"prompt": "", "target": "y"}\n', "must be non-empty strings"),
                                              (b"\xff\xfe{}", "is not UTF-8 text"),
                                              ('{"prompt": "x", "target": "y"}\n{"prompt": "caf\u00e9", "target": "y"}\n'.encode(),
                                               "bad.jsonl:2: character 'é' is outside TinyLM's vocabulary")])
def test_more_bad_jsonl(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    code, err = run_cli(["run", "--preset", "quick", "--out", str(tmp_path / "run"), "--set", f'data.tasks=["jsonl:{bad}"]'], capsys)
    assert code == 2 and message in err and not (tmp_path / "run").exists()


def test_ints_in_float_lists_are_fractions_not_counts():
    from taskloc.studies.weight_delta import WeightDeltaConfig

    cfg = WeightDeltaConfig.from_dict({"graft_fractions": [0.01, 1]})
    assert cfg.graft_fractions == [0.01, 1.0] and all(isinstance(f, float) for f in cfg.graft_fractions)


# --- checkpoint paths on the model verbs: --allow-pickle and run directories -------------------


def _pickle_only_hf_folder(folder):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_sites_refuses_pickle_weights_unless_allowed(tmp_path, capsys):
    folder = _pickle_only_hf_folder(tmp_path / "gpt2")
    capsys.readouterr()
    code, err = run_cli(["sites", str(folder)], capsys)
    assert code == 2 and err.strip() == (
        f"error: {folder / 'pytorch_model.bin'} is a pickle checkpoint, which can run code when loaded; refused. "
        "Convert it to safetensors, or pass --allow-pickle if you trust its source."
    )
    code, err = run_cli(["sites", str(folder), "--allow-pickle"], capsys)
    # loaded this time: what stops it now is the folder's missing tokenizer, not its weights
    assert code == 2 and err.strip() == (
        f"error: {folder} has no tokenizer, so text cannot be encoded; add its tokenizer files "
        "(tokenizer.json, tokenizer_config.json) to the folder."
    )


def _run_dir_with_base(run, tiny_model):
    import json

    from taskloc.io.atomic import write_safetensors

    meta = {"taskloc": json.dumps({"kind": "base", "model": tiny_model.cfg.to_dict()})}
    write_safetensors(run / "artefacts" / "base-0123" / "model.safetensors", tiny_model.state_dict(), meta)
    return run


def test_a_run_directory_means_its_base_model_for_every_verb(tmp_path, tiny_model, capsys):
    from safetensors.torch import save_file

    run = _run_dir_with_base(tmp_path / "run", tiny_model)
    main(["sites", str(run), "--prompt", "S:3141>"])
    unwrapped = "".join(capsys.readouterr().err.split())  # rich wraps long paths
    assert f"tinylmmodel{run / 'artefacts' / 'base-0123' / 'model.safetensors'}" in unwrapped
    tuned = {n: t + 0.5 * (n == "unembed.weight") for n, t in tiny_model.state_dict().items()}
    save_file({n: t.contiguous() for n, t in tuned.items()}, str(tmp_path / "tuned.safetensors"))
    main(["delta", str(run), str(tmp_path / "tuned.safetensors"), "--top", "10"])
    unwrapped = "".join(capsys.readouterr().out.split())
    assert f"delta{run / 'artefacts' / 'base-0123'}(hf-folder)->{tmp_path / 'tuned.safetensors'}(safetensors)" in unwrapped
    assert "top1of1changedtensors" in unwrapped  # against the run's own base only the head moved


@pytest.mark.parametrize("verb", [["sites"], ["delta", "{run}"]])
def test_a_run_directory_without_a_base_is_one_error_for_every_verb(tmp_path, capsys, verb):
    run = tmp_path / "run"
    (run / "artefacts" / "ft-1").mkdir(parents=True)
    code, err = run_cli([*(a.format(run=run) for a in verb), str(run)], capsys)
    assert code == 2 and err.strip() == (
        f"error: {run} is a taskloc run directory without a finished base model (still pretraining, or a run on "
        "--model); pass a run that pretrained its base, or the model file or folder itself."
    )
