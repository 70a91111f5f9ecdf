"""PEZ hard prompts (Wen et al. 2023, "Hard Prompts Made Easy"): the text whose CLIP features best match a set of
images, found by projected gradient descent on token embeddings. VISII's official code initializes its
instruction with a 10-token PEZ prompt of the after image (train.py:64-83, pez.py, configs/
hard_prompts_made_easy.json); the defaults here are that file's.

Each step projects the continuous token embeddings onto their nearest vocabulary tokens (cosine), takes the
gradient of 1 - cos(image, text) at the projected tokens, and applies it to the continuous embeddings with AdamW;
the answer is the projected prompt whose mean similarity to all images was the highest at any step.

Differences from the official code, on purpose: the random start and the image drawn each step come from a
generator seeded by ``seed`` (theirs are unseeded), and the start-of-text and end-of-text tokens are not
candidates (theirs are: a prompt holding one decodes to text whose re-encoding ends the instruction there)."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from tqdm import tqdm

from ..clip import Clip, OpenClip, TransformersClip
from ..errors import InvertError

# configs/hard_prompts_made_easy.json of the official VISII code.
PEZ_TOKENS = 10
PEZ_STEPS = 3000
PEZ_LR = 0.1
PEZ_WEIGHT_DECAY = 0.1
PEZ_BATCH = 1  # images drawn per step for the gradient; the best prompt is judged on all of them


class TextTower:
    """What PEZ needs of a CLIP text tower: its token table, special ids, the text features of an id sequence
    whose token embeddings at positions 1..k are replaced by given vectors, and decoding."""

    def __init__(self, embedding: torch.nn.Embedding, bos: int, eos: int, pad: int, length: int,
                 encode: Callable[[torch.Tensor], torch.Tensor], decode: Callable[[list[int]], str]):
        self.embedding, self.bos, self.eos, self.pad, self.length = embedding, bos, eos, pad, length
        self.encode, self.decode = encode, decode

    def features(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Projected text features (1, p) of ``ids`` (1, length) with positions 1..k embedded as ``tokens`` (k, w)."""

        def swap(module, args, out):
            k = len(tokens)
            return torch.cat([out[:, :1], tokens[None].to(out.dtype), out[:, 1 + k:]], dim=1)

        handle = self.embedding.register_forward_hook(swap)
        try:
            return self.encode(ids).float()
        finally:
            handle.remove()


def text_tower(clip: Clip) -> TextTower:
    if isinstance(clip, TransformersClip):
        model, tok = clip.model, clip.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return TextTower(model.text_model.embeddings.token_embedding, tok.bos_token_id, tok.eos_token_id, pad,
                          model.config.text_config.max_position_embeddings,
                          lambda ids: model.text_projection(model.text_model(input_ids=ids).pooler_output),
                          lambda ids: tok.decode(ids).strip())
    if isinstance(clip, OpenClip) and hasattr(clip.model, "token_embedding") \
            and hasattr(clip.tokenizer, "sot_token_id"):
        tok = clip.tokenizer
        # open_clip pads with 0 and pools at the largest id, the end-of-text token.
        return TextTower(clip.model.token_embedding, tok.sot_token_id, tok.eot_token_id, 0, tok.context_length,
                          clip.model.encode_text, lambda ids: tok.decode(ids).strip())
    raise InvertError(f"PEZ needs a CLIP text tower with its own token embedding table and CLIP's BPE tokenizer; "
                      f"'{clip.name}' has none")


def pez_prompt(clip: Clip, images: list[Image.Image], *, tokens: int = PEZ_TOKENS, steps: int = PEZ_STEPS,
               lr: float = PEZ_LR, weight_decay: float = PEZ_WEIGHT_DECAY, batch_size: int = PEZ_BATCH,
               seed: int = 0, quiet: bool = True) -> str:
    """A ``tokens``-token hard prompt for ``images`` (VISII: the after images); the same for the same seed."""
    tower = text_tower(clip)
    if not 1 <= tokens <= tower.length - 2:
        raise InvertError(f"PEZ prompt length must be 1 to {tower.length - 2} tokens, not {tokens}")
    if steps < 1:
        raise InvertError(f"PEZ needs at least one step, not {steps}")
    gen = torch.Generator("cpu").manual_seed(seed)
    table = tower.embedding.weight.detach()
    device = table.device
    with torch.no_grad():
        targets = torch.nn.functional.normalize(clip.image_features(images).float().to(device), dim=-1)
        unit = torch.nn.functional.normalize(table.float(), dim=-1)
    excluded = torch.tensor([tower.bos, tower.eos], device=device)
    allowed = torch.ones(len(table), dtype=torch.bool, device=device)
    allowed[excluded] = False
    candidates = allowed.nonzero().flatten()
    start = candidates[torch.randint(len(candidates), (tokens,), generator=gen).to(device)]
    soft = table[start].float().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([soft], lr=lr, weight_decay=weight_decay)
    ids = torch.full((1, tower.length), tower.pad, dtype=torch.long, device=device)
    ids[0, 0], ids[0, tokens + 1] = tower.bos, tower.eos
    best_score, best = -float("inf"), start
    for _ in tqdm(range(steps), desc="PEZ prompt", disable=quiet):
        with torch.no_grad():
            cosine = torch.nn.functional.normalize(soft, dim=-1) @ unit.T
            nearest = cosine.masked_fill(~allowed, -float("inf")).argmax(-1)
        hard = table[nearest].float().requires_grad_(True)
        ids[0, 1:tokens + 1] = nearest
        text = torch.nn.functional.normalize(tower.features(ids, hard), dim=-1)
        sims = (targets @ text.T).flatten()
        batch = torch.randperm(len(sims), generator=gen)[:batch_size].to(device)
        loss = 1 - sims[batch].mean()
        soft.grad, = torch.autograd.grad(loss, [hard])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        score = float(sims.detach().mean())
        if score > best_score:
            best_score, best = score, nearest.clone()
    return tower.decode(best.tolist())
