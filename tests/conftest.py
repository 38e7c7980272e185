import os

import pytest
import torch

os.environ.setdefault("TASKLOC_QUIET", "1")

from taskloc.models import ModelConfig, TinyLM
from taskloc.tasks import VOCAB_SIZE


@pytest.fixture
def tiny_model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(ModelConfig(vocab_size=VOCAB_SIZE, n_layer=2, n_head=2, d_model=32, d_mlp=64, block_size=64)).eval()

