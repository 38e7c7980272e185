import json

import pytest
import torch

from taskloc.cli import main
from taskloc.io.atomic import write_safetensors
from taskloc.models import load_model


def _save_tiny(tiny_model, path):
    write_safetensors(path, tiny_model.state_dict(), {"taskloc": json.dumps({"kind": "base", "model": tiny_model.cfg.to_dict()})})


def test_sites_lists_every_site_in_forward_order(tiny_model, tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    _save_tiny(tiny_model, path)
    loaded = load_model(path, "cpu")
    x = torch.randint(2, 90, (1, 6))
    assert torch.equal(loaded.model(x), tiny_model(x))
    main(["sites", str(path), "--prompt", "S:3141>"])
    out = capsys.readouterr().err
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert rows[:7] == ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_pattern", "blocks.0.hook_attn_out",
                        "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
    assert rows[-1] == "ln_final.hook_normalized" and len(rows) == 15
    assert "1x7x32" in out  # 7 prompt tokens, width 32


def test_sites_on_hf_folder_without_tokenizer_says_so(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    capsys.readouterr()  # drop transformers' own progress output
    with pytest.raises(SystemExit) as exc:
        main(["sites", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "has no tokenizer" in err and len(err.strip().splitlines()) == 1


def test_safetensors_without_taskloc_metadata_is_refused(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(SystemExit) as exc:
        main(["sites", str(tmp_path / "x.safetensors")])
    assert exc.value.code == 2 and "carries no taskloc metadata" in capsys.readouterr().err
