"""Lazy checkpoint reading for every layout, clear errors for bad files, format-keeping writers,
and LoRA deltas that match PEFT's own merge."""
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from taskloc.errors import CheckpointError
from taskloc.io import MemoryCheckpoint, SafetensorsCheckpoint, fingerprint, open_checkpoint, write_like


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.attn.qkv.weight": torch.randn(12, 4, generator=g), "blocks.0.attn.qkv.bias": torch.randn(12, generator=g),
            "tok_emb.weight": torch.randn(10, 4, generator=g).bfloat16(), "step": torch.tensor([3])}


def test_single_file_is_lazy_and_reads_headers_first(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), str(path), metadata={"step": "3"})
    def refuse(*a, **k):
        raise AssertionError("data read before it was asked for")

    monkeypatch.setattr(SafetensorsCheckpoint, "read_flat", refuse)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "safetensors" and ckpt.metadata == {"step": "3"}
    assert set(ckpt.names()) == set(_tensors())
    assert ckpt.shape("blocks.0.attn.qkv.weight") == (12, 4) and ckpt.dtype("tok_emb.weight") == torch.bfloat16
    monkeypatch.undo()
    assert torch.equal(ckpt.get("tok_emb.weight"), _tensors()["tok_emb.weight"])
    with pytest.raises(CheckpointError, match=r"has no tensor 'tok_emb\.weigth'; did you mean 'tok_emb\.weight'"):
        ckpt.get("tok_emb.weigth")


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-7], r"is truncated: tensor '.*' ends at data byte \d+ but the data section holds only \d+ bytes"),
    (lambda raw: raw[:5], r"holds 5 bytes, too few for a safetensors file"),
    (lambda raw: struct.pack("<Q", 10**9) + raw[8:], r"header length field says 1000000000 bytes but only \d+ bytes follow"),
    (lambda raw: raw[:8] + b"!" + raw[9:], r"has a corrupt header \(not valid JSON"),
])
def test_damaged_safetensors_give_one_clear_error(tmp_path, damage, message):
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), str(path))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(path)


def test_header_offsets_must_match_shape_and_dtype(tmp_path):
    path = tmp_path / "m.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(24))
    with pytest.raises(CheckpointError, match=r"tensor 'w' of shape \(2, 3\) and dtype F32 needs 24 bytes but its offsets span 20"):
        open_checkpoint(path)


def _refusal(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path, **kwargs)
    return str(info.value)


def _sharded_folder(folder, tensors):
    folder.mkdir()
    names = list(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    for shard, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {n: s for s, part in shards.items() for n in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text("{}")
    return folder


def test_sharded_folder_reads_across_shards_and_names_a_missing_shard(tmp_path):
    tensors = _tensors()
    folder = _sharded_folder(tmp_path / "hf", tensors)
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "hf-sharded" and sorted(ckpt.names()) == sorted(tensors)
    assert all(torch.equal(ckpt.get(n), t) for n, t in tensors.items())
    (folder / "model-00002-of-00002.safetensors").unlink()
    assert _refusal(folder) == (f"model.safetensors.index.json in {folder} lists 2 shard(s) but 1 are missing, "
                                "first model-00002-of-00002.safetensors; download or copy the complete checkpoint.")


def test_run_directory_stands_for_its_one_base_model(tmp_path):
    run = tmp_path / "run"
    (run / "artefacts" / "base-abc").mkdir(parents=True)
    save_file(_tensors(), str(run / "artefacts" / "base-abc" / "model.safetensors"))
    (run / "artefacts" / "ft-add").mkdir()  # fine-tunes beside the base do not make it ambiguous
    save_file(_tensors(1), str(run / "artefacts" / "ft-add" / "model.safetensors"))
    ckpt = open_checkpoint(run)
    assert ckpt.path == run / "artefacts" / "base-abc" and ckpt.format == "hf-folder"
    assert torch.equal(ckpt.get("blocks.0.attn.qkv.weight"), _tensors()["blocks.0.attn.qkv.weight"])
    (run / "artefacts" / "base-def").mkdir()
    save_file(_tensors(2), str(run / "artefacts" / "base-def" / "model.safetensors"))
    assert _refusal(run) == (f"{run} is a run directory with 2 base models ('artefacts/base-abc', 'artefacts/base-def'); "
                             "pass one of these folders.")


def test_run_directory_without_a_base_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"preset": "quick", "pretrain": {}}))
    assert _refusal(run) == (
        f"{run} is a taskloc run directory without a finished base model (still pretraining, or a run on --model); "
        "pass a run that pretrained its base, or the model file or folder itself."
    )


@pytest.mark.parametrize("make, message", [
    (lambda p: p, r"does not exist; expected a \.safetensors file, a Hugging Face model folder"),
    (lambda p: (p.mkdir(), p)[1], r"is a folder that holds no model; expected"),
    (lambda p: (p.write_text("x"), p)[1], r"is not a checkpoint file; expected"),
])
def test_anything_else_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(make(tmp_path / "thing.txt"))


def test_pickle_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "model.bin"
    torch.save(_tensors(), path)
    with pytest.raises(CheckpointError, match=r"is a pickle checkpoint, which can run code when loaded; refused.*--allow-pickle"):
        open_checkpoint(path)
    ckpt = open_checkpoint(path, allow_pickle=True)
    assert ckpt.format == "pickle" and torch.equal(ckpt.get("blocks.0.attn.qkv.weight"), _tensors()["blocks.0.attn.qkv.weight"])


def test_pickle_with_objects_is_refused_even_when_allowed(tmp_path):
    path = tmp_path / "model.pt"
    import argparse

    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, path)  # not on weights_only's allow-list
    with pytest.raises(CheckpointError, match=r"cannot load pickle checkpoint"):
        open_checkpoint(path, allow_pickle=True)


def test_single_file_writer_keeps_metadata_dtypes_and_is_atomic(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(_tensors(), str(src), metadata={"step": "3"})
    base = open_checkpoint(src)
    out = tmp_path / "out.safetensors"
    write_like(base, out, base.get, {"note": "x"})
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"step": "3", "note": "x"}
        assert f.get_tensor("tok_emb.weight").dtype == torch.bfloat16
    assert fingerprint(open_checkpoint(out)) == fingerprint(base)

    def broken(name):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_like(base, tmp_path / "never.safetensors", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "out.safetensors"]


def test_sharded_writer_keeps_shards_index_and_other_files(tmp_path):
    folder = _sharded_folder(tmp_path / "hf", _tensors())
    (folder / "tokenizer.json").write_text("{}")
    (folder / "pytorch_model.bin").write_text("stale weights must not be copied")
    base = open_checkpoint(folder)
    out = tmp_path / "out"
    write_like(base, out, base.get)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "tokenizer.json", "model.safetensors.index.json",
         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in _tensors().values())
    again = open_checkpoint(out)
    assert all(torch.equal(again.get(n), base.get(n)) for n in base.names())
    with pytest.raises(CheckpointError, match=r"--out .* already exists; the output is a model folder"):
        write_like(base, out, base.get)


def test_fingerprint_sees_a_change_in_one_window():
    big = {"w": torch.zeros(100_000)}
    changed = {"w": big["w"].clone()}
    changed["w"][0] = 1.0
    assert fingerprint(MemoryCheckpoint(big)) != fingerprint(MemoryCheckpoint(changed))
    assert fingerprint(MemoryCheckpoint(big)) == fingerprint(MemoryCheckpoint({"w": torch.zeros(100_000)}))


# --- PEFT LoRA -----------------------------------------------------------------------------------

def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_delta_equals_peft_merge(tmp_path, family):
    from peft import LoraConfig, get_peft_model

    from taskloc.deltas.sources import pair_source

    if family == "llama":
        model = _tiny_llama()
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"], init_lora_weights=False,
                            rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 3}, modules_to_save=["lm_head"])
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40, n_positions=32))
        config = LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn"], fan_in_fan_out=True, use_rslora=True,
                            init_lora_weights=False)
    model.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make modules_to_save differ from the base
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()

    base = open_checkpoint(tmp_path / "base")
    adapter = open_checkpoint(tmp_path / "adapter")
    assert adapter.format == "peft-lora"
    source = pair_source(base, adapter)
    changed = 0
    for name in source.names:
        item = source.load(name)
        tuned = item.tuned if item.tuned is not None else item.base
        want = merged[name].reshape(-1)
        assert torch.equal(tuned, want), name  # same float32 ops in the same order as PEFT
        changed += item.delta is not None
    assert changed == (6 if family == "llama" else 2)  # 2 q + 2 v + embedding + lm_head / 2 c_attn
    if family == "llama":
        assert source.lora_rank("model.layers.1.self_attn.q_proj.weight") == 2
        assert source.lora_rank("model.layers.0.self_attn.q_proj.weight") == 4
        assert source.lora_rank("lm_head.weight") is None


def test_lora_adapter_that_does_not_fit_the_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    from taskloc.deltas.sources import pair_source

    model = _tiny_llama()
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(tmp_path / "adapter")
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(16, 16)}, str(tmp_path / "base.safetensors"))
    with pytest.raises(CheckpointError, match=r"changes 'model\.layers\.1\.self_attn\.q_proj\.weight', which the base .* does not hold"):
        pair_source(open_checkpoint(tmp_path / "base.safetensors"), open_checkpoint(tmp_path / "adapter"))
    save_file({f"model.layers.{i}.self_attn.q_proj.weight": torch.zeros(16, 8) for i in range(2)}, str(tmp_path / "base.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.self_attn\.q_proj\.weight' has shape \(16, 8\) in the base but .* shape \(16, 16\)"):
        pair_source(open_checkpoint(tmp_path / "base.safetensors"), open_checkpoint(tmp_path / "adapter"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**cfg, "r": 5}))
    with pytest.raises(CheckpointError, match=r"has rank 2 but adapter_config\.json gives module .* r=5"):
        open_checkpoint(tmp_path / "adapter")


def test_safetensors_checkpoint_exposes_file_of_each_tensor(tmp_path):
    folder = _sharded_folder(tmp_path / "hf", _tensors())
    ckpt = open_checkpoint(folder)
    assert isinstance(ckpt, SafetensorsCheckpoint)
    assert {ckpt.file_of(n).name for n in ckpt.names()} == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


def test_view_flat_maps_the_file_without_copying_and_refuses_a_truncated_file(tmp_path):
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    ckpt = open_checkpoint(path)
    for name, t in tensors.items():
        view = ckpt.view_flat(name)
        assert view.dtype == t.dtype and torch.equal(view, t.reshape(-1))
    ckpt.prefetch("tok_emb.weight")  # a hint only
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])  # truncated after the header was read: mapping past the end would kill the process
    with pytest.raises(CheckpointError, match=r"ended while reading tensor"):
        ckpt.view_flat(max(ckpt.names(), key=lambda n: ckpt.entries[n].end))
    ckpt.close()
