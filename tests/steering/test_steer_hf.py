"""Must-show on a tiny Hugging Face Llama built offline: the extracted vector is the direct
mean difference of HF's own ``output_hidden_states`` under the documented layer convention
(layer L = hidden_states[L + 1]), and gamma = 0 leaves generation bit-identical."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models  # noqa: E402

from taskloc.hf import load_hf_model  # noqa: E402
from taskloc.steering.extract import Pair, extract_vector  # noqa: E402
from taskloc.steering.inject import steering  # noqa: E402
from taskloc.steering.text import eos_id, prompt_ids  # noqa: E402

N_LAYER = 3
PAIRS = [Pair(f"M:{a}+{b}=", f"{(a + b) % 10}", f"{a}+{b}={(a + b) % 10}") for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 9)]]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>"] + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # one token per character
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=N_LAYER, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_hf_model(folder, device="cpu").eval()


@pytest.mark.parametrize("method", ["last", "mean"])
@pytest.mark.parametrize("layer", range(N_LAYER - 1))  # the last block's output HF reports after the final norm
def test_vector_equals_mean_difference_of_output_hidden_states(llama, layer, method):
    vec = extract_vector(llama, PAIRS, layer, method=method)
    diffs = []
    for p in PAIRS:
        states = []
        for completion in (p.positive, p.negative):
            prompt = llama.tokenizer(p.prompt)["input_ids"]
            ids = llama.tokenizer(p.prompt + completion)["input_ids"]
            with torch.no_grad():
                h = llama.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]  # (T, D)
            states.append(h[-1] if method == "last" else h[len(prompt):].mean(0))
        diffs.append(states[0] - states[1])
    direct = torch.stack(diffs).mean(0)
    assert torch.allclose(vec.vector, direct, atol=1e-5), float((vec.vector - direct).abs().max())


def test_gamma_zero_leaves_generation_bit_identical(llama):
    vec = extract_vector(llama, PAIRS, 1)
    ids = torch.tensor([prompt_ids(llama, p.prompt) for p in PAIRS])  # equal lengths
    plain = llama.generate(ids, 10, eos_id=eos_id(llama))
    with steering(llama, vec, 0.0):
        zero = llama.generate(ids, 10, eos_id=eos_id(llama))
    assert torch.equal(plain, zero)
    with steering(llama, vec, 40.0):
        moved = llama.generate(ids, 10, eos_id=eos_id(llama))
    assert not torch.equal(plain, moved)  # the same hook at a real gamma does change it
