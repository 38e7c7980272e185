"""The model side: TinyLM, the loader that returns TinyLM or a wrapped Hugging Face model with the
same hook sites, and the codec that turns task text into each model's token ids."""
from .codec import CHAR_CODEC, TokenizerCodec, codec_of, no_tokenizer_message
from .load import LoadedModel, load_model, load_weights, unique_weight_names, weights_of
from .protocol import LanguageModel, greedy_decode
from .tinylm import KVCache, ModelConfig, TinyLM

__all__ = [
           "CHAR_CODEC",
           "KVCache",
           "LanguageModel",
           "LoadedModel",
           "ModelConfig",
           "TinyLM",
           "TokenizerCodec",
           "codec_of",
           "greedy_decode",
           "load_model",
           "load_weights",
           "no_tokenizer_message",
           "unique_weight_names",
           "weights_of",
]
