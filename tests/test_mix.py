"""--mix combines what each instruction learned (its change from its init), per method, and leaves what no one
learned at the base; weights of a total other than 1 scale the combined change as --strength does (issue 25, item
1). That copies of one file mixed by weights summing to 1 are the file and 1, 0 is the first is part of every
method's contract (test_method_contract.py)."""
import pytest
import torch
from conftest import float_noise, scene, tiny_fit

from invert.api import load_method, mixed_method
from invert.methods import method_names

NIGHT, OTHER = "make it night", "turn the day into a dark blue night"


def night(n=2):
    return [scene(i) for i in range(n)], [scene(i, night=True) for i in range(n)]


@pytest.fixture(scope="module", params=method_names())
def fits(request, editor):
    """Per method: a, b (same init text, other seeds) and c (another init text, other token count)."""
    method = request.param
    return tuple(tiny_fit(editor, *night(), method, steps=3, lr=5e-2, init_text=text, seed=seed)
                 for text, seed in ((NIGHT, 0), (NIGHT, 1), (OTHER, 2)))


def tensors_of(method):
    return {k: v.detach() for k, v in method.tensors().items()}


def assert_same(got, want, atol=0.0):
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=atol, msg=key)


def test_weights_not_summing_to_one_scale_the_change(fits, editor):
    """The issue's case: --mix 0.7,0 of a file and another is the file at --strength 0.7 (it was a raw weighted sum
    of whole encodings, BOS row included); 1,1 of one file twice is --strength 2 (it was twice its encoding)."""
    a, b, c = fits
    assert_same(tensors_of(mixed_method([a, c], editor, [0.7, 0.0])), tensors_of(load_method(a, editor, 0.7)))
    assert_same(tensors_of(mixed_method([a, a], editor, [1.0, 1.0])), tensors_of(load_method(a, editor, 2.0)))
    for x, y in ((a, b), (a, c)):  # a total of 1.4 is the mix of total 1 at strength 1.4
        scaled = tensors_of(mixed_method([x, y], editor, [0.7, 0.7]))
        strength = tensors_of(mixed_method([x, y], editor, [0.5, 0.5], strength=1.4))
        assert_same(scaled, strength, atol=float_noise(*scaled.values(), gain=4))


def test_what_no_instruction_learned_stays_as_it_was(fits, editor):
    """Two fits from one init text, any weights: the init encoding (visii: BOS, EOS and padding; brush: the text
    rows' encoding; lora: the prompt) is theirs exactly, not scaled by the weights."""
    a, b, _ = fits
    mixed = mixed_method([a, b], editor, [0.3, 0.9])
    assert torch.equal(mixed.init, load_method(a, editor).init)
    if a.method == "visii":
        embeds, own = mixed.prompt_embeds().detach(), load_method(a, editor).prompt_embeds().detach()
        assert torch.equal(embeds[:, :1], own[:, :1]) and torch.equal(embeds[:, mixed.eos:], own[:, mixed.eos:])


def test_visii_changes_are_measured_from_each_ones_init(fits, editor):
    """Different init texts: each instruction's change from its own init is added to the base (the inits averaged
    by |weight|), so the mix minus the mix of the untrained instructions is the weighted sum of the changes."""
    a, _, c = fits
    if a.method != "visii":
        pytest.skip("visii's learned tokens; the other methods' rule is the same in their own state")
    weights = [0.3, 0.9]
    ma, mc = load_method(a, editor), load_method(c, editor)
    tokens = max(ma.num_tokens, mc.num_tokens)
    change = sum(w * (m.widen(tokens).learned - m.widen(tokens).init[:, 1:tokens + 1]).detach()
                 for w, m in zip(weights, (ma, mc)))
    mixed = mixed_method([a, c], editor, weights).learned.detach()
    base = mixed_method([a, c], editor, weights, strength=0.0).learned.detach()
    torch.testing.assert_close(mixed - base, change, rtol=0, atol=float_noise(mixed, gain=4))
    bos = ma.prompt_embeds()[:, :1].detach()
    assert torch.equal(mixed_method([a, c], editor, weights).prompt_embeds()[:, :1].detach(), bos)
