"""Small tokenizers trained in-process, for pipelines built with random weights from configs (``--model
random:FOLDER``, the tests' tiny models): the real T5 and Qwen3 vocabularies are hub downloads, and a random-weight
model reads any token ids below its vocabulary size. Each is trained with the ``tokenizers`` library on a fixed
corpus of instruction-like sentences (so it is the same every time) and wrapped in the transformers class the
pipeline declares."""
from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Qwen2TokenizerFast, T5TokenizerFast

# Qwen3's chat template, the parts FLUX.2 [klein] uses: user turns, the generation prompt, thinking turned off.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def corpus() -> list[str]:
    verbs = ["make", "turn", "change", "paint", "give", "add", "remove", "replace", "put", "convert"]
    things = ["the cat", "the sky", "the car", "the house", "her hair", "the dog", "the tree", "the sea", "the wall",
              "his shirt", "the flowers", "the bird"]
    changes = ["red", "blue", "into a painting", "snowy", "at night", "with a hat", "made of gold", "in watercolor",
               "brighter", "darker", "green", "a sunset"]
    return [f"{v} {t} {c}" for v, t, c in itertools.product(verbs, things, changes)]


def t5_tokenizer(vocab_size: int = 300) -> T5TokenizerFast:
    """A Unigram model wrapped in T5TokenizerFast: ids 0, 1, 2 are <pad>, </s>, <unk> as in T5."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.train_from_iterator(corpus(), trainer=trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    vocab = [tuple(x) for x in json.loads(tok.to_str())["model"]["vocab"]]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def qwen_tokenizer(vocab_size: int = 600, texts: list[str] | None = None) -> Qwen2TokenizerFast:
    """A byte-level BPE trained on ``texts`` (default: this module's fixed corpus), wrapped in Qwen2TokenizerFast
    with Qwen3's special tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus() if texts is None else texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    qwen = Qwen2TokenizerFast(vocab=model["vocab"], merges=merges, model_max_length=131072)
    qwen.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    qwen.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    qwen.chat_template = QWEN3_CHAT_TEMPLATE
    return qwen


__all__ = ["QWEN3_CHAT_TEMPLATE", "qwen_tokenizer", "t5_tokenizer"]
