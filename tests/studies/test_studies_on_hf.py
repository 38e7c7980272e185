"""Studies on a model given with --model: a tiny local GPT-2 / Llama with a character tokenizer,
and a taskloc TinyLM from an earlier run, instead of pretraining the embedded default."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer, models  # noqa: E402

from taskloc.cli import main  # noqa: E402
from taskloc.hf import load_hf_model  # noqa: E402
from taskloc.io import MemoryCheckpoint, fingerprint  # noqa: E402
from taskloc.models import (  # noqa: E402
    codec_of,
    load_weights,
    weights_of,
)

CHARS = [chr(c) for c in range(32, 127)]
SPECIALS = ["<pad>", "<eos>", "<unk>"]


def _char_tokenizer():
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one token per character
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _build(family: str, vocab: int):
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=64,
                                      bos_token_id=1, eos_token_id=1, pad_token_id=0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=1, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf_folder(request, tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = _char_tokenizer()
    folder = tmp_path_factory.mktemp(request.param)
    _build(request.param, len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _run(args, capsys):
    capsys.readouterr()  # drop what building the fixtures printed (HF's save progress bars)
    try:
        main(["run", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_codec_encodes_answers_with_the_models_tokenizer(hf_folder):
    model = load_hf_model(hf_folder, device="cpu")
    inputs, labels, mask = codec_of(model).encode_batch([("A:1+2=", "3"), ("S:21>", "12")])
    tok = model.tokenizer
    # Row 0: ids of "A:1+2=" then "3" then EOS; the loss sees exactly the answer and the EOS.
    prompt, answer = tok("A:1+2=", add_special_tokens=False)["input_ids"], tok("3", add_special_tokens=False)["input_ids"]
    assert labels[0, mask[0]].tolist() == answer + [tok.eos_token_id]
    assert inputs[0, : len(prompt)].tolist() == prompt
    assert labels[1, mask[1]].tolist() == tok("12", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _metaspace_tokenizer(bos: bool):
    """A SentencePiece-style tokenizer (Llama-2, Mistral): a word start is marked with "▁", which
    tokenizing a target on its own would wrongly add; optionally a BOS it puts first itself."""
    from tokenizers import decoders, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIALS + ["<s>", "\u2581"] + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>", bos_token="<s>")


@pytest.mark.parametrize("bos", [False, True])
def test_answer_ids_are_the_targets_tokens_in_context(bos):
    from taskloc.models import TokenizerCodec

    tok = _metaspace_tokenizer(bos)
    codec = TokenizerCodec(tok)
    inputs, labels, mask = codec.encode_batch([("A:1+2=", "3"), ("S:21>", "12")])
    for row, (prompt, target) in enumerate([("A:1+2=", "3"), ("S:21>", "12")]):
        joint = tok(prompt + target, add_special_tokens=False)["input_ids"]
        alone = tok(prompt, add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(labels[row, mask[row]].tolist()) == list(target) + ["<eos>"]  # no "▁"
        assert labels[row, mask[row]].tolist() == joint[len(alone):] + [tok.eos_token_id]
        start = [tok.convert_tokens_to_ids("<s>")] if bos else []  # the tokenizer's own BOS, nothing invented
        assert inputs[row, : len(start) + len(alone)].tolist() == start + alone
    assert tok.convert_ids_to_tokens(tok("3", add_special_tokens=False)["input_ids"])[0] == "\u2581"  # the trap avoided


def test_task_text_outside_ascii_is_fine_for_a_tokenizer(tmp_path):
    from taskloc.models import TokenizerCodec
    from taskloc.tasks import get_task

    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "caf\u00e9 \u2192", "target": "\u00e9t\u00e9"}\n', encoding="utf-8")
    task = get_task(f"jsonl:{path}")  # loads: the characters only matter to the codec that reads them
    assert task.outside_vocab == f"{path}:1: character 'é'"
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(SPECIALS + CHARS + ["é", "→"])},
                                              merges=[], unk_token="<unk>")),
        pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    _, labels, mask = TokenizerCodec(tok).encode_batch([(e.prompt, e.target) for e in task.by_level[1]])
    assert tok.convert_ids_to_tokens(labels[0, mask[0]].tolist()) == ["é", "t", "é", "<eos>"]


def test_weights_without_tied_aliases_round_trip():
    torch.manual_seed(0)
    model = _build("gpt2", 100)  # GPT-2 ties lm_head to wte
    from taskloc.hf import HFModel

    wrapped = HFModel(model)
    weights = weights_of(wrapped)
    assert "hf.lm_head.weight" not in weights and "hf.transformer.wte.weight" in weights
    weights["hf.transformer.wte.weight"] += 1.0
    load_weights(wrapped, weights)
    assert torch.equal(model.lm_head.weight, weights["hf.transformer.wte.weight"])  # the alias follows


def test_studies_run_on_a_hugging_face_model(hf_folder, tmp_path, capsys):
    out = tmp_path / "run"
    # every selection rule runs (learned and saliency through the HF model, tied weights included), on a small grid
    small = ["--set", "eval.examples=16", "--set", "studies.weight-delta.finetune.steps=10", "--set", "studies.weight-delta.fit_examples=8",
             "--set", "studies.weight-delta.learned_steps=2", "--set", "studies.weight-delta.graft_fractions=[0.01, 1.0]"]
    code, err = _run(["base-model", "weight-delta", "--preset", "quick", "--model", str(hf_folder), "--out", str(out), *small], capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["model_path"] == str(hf_folder.resolve())
    base = doc["studies"]["base-model"]
    assert base["metrics"]["pretrain_steps"] is None  # evaluated as given, never pretrained
    assert not (out / "artefacts").exists() or not list((out / "artefacts").glob("base-*"))
    assert {f["name"] for f in base["figures"]} == {"accuracy-grid", "per-task"}  # no learning curve to draw
    delta = doc["studies"]["weight-delta"]
    assert [c["id"] for c in delta["claims"]] == ["C0"] * 4
    assert (out / "report.html").stat().st_size > 10_000


def test_studies_run_on_a_tinylm_from_an_earlier_run(tmp_path, capsys):
    first = tmp_path / "first"
    assert _run(["base-model", "--preset", "quick", "--out", str(first)], capsys)[0] == 0
    second = tmp_path / "second"
    assert _run(["base-model", "--preset", "quick", "--model", str(first), "--out", str(second)], capsys)[0] == 0
    a = json.loads((first / "results.json").read_text())["studies"]["base-model"]["metrics"]
    b = json.loads((second / "results.json").read_text())["studies"]["base-model"]["metrics"]
    base_file = next(first.glob("artefacts/base-*/model.safetensors"))
    # the second run studied exactly the first run's weights (content fingerprint), and scores them the same
    assert a["model_fingerprint"] is None
    assert b["model_fingerprint"] == fingerprint(MemoryCheckpoint(load_file(str(base_file))))
    assert a["accuracy"] == b["accuracy"]


def test_a_run_directory_without_a_base_is_named(tmp_path, capsys):
    first = tmp_path / "first"
    assert _run(["base-model", "--preset", "quick", "--out", str(first)], capsys)[0] == 0
    for folder in first.glob("artefacts/base-*"):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    code, err = _run(["--preset", "quick", "--model", str(first), "--out", str(tmp_path / "second")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "run directory without a finished base model" in err and not (tmp_path / "second").exists()


def test_a_bert_encoder_is_refused_for_studies(tmp_path, capsys):
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=48, max_position_embeddings=64)
    transformers.BertForMaskedLM(cfg).save_pretrained(tmp_path / "bert")
    code, err = _run(["--preset", "quick", "--model", str(tmp_path / "bert"), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "need a causal LM" in err and not (tmp_path / "run").exists()


def test_a_model_without_tokenizer_is_refused_for_studies(tmp_path, capsys):
    _build("gpt2", 100).save_pretrained(tmp_path / "gpt2")
    code, err = _run(["--preset", "quick", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no tokenizer" in err and not (tmp_path / "run").exists()


def test_weights_of_another_architecture_are_one_clear_error():
    from taskloc.errors import CheckpointError
    from taskloc.models import ModelConfig, TinyLM

    small, wide = TinyLM(ModelConfig(d_model=32, n_head=2)), TinyLM(ModelConfig(d_model=64, n_head=2))
    with pytest.raises(CheckpointError) as exc:
        load_weights(small, weights_of(wide))
    assert "\n" not in str(exc.value) and "do not fit" in str(exc.value) and "size mismatch" in str(exc.value)
