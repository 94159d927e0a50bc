"""Student-side scores: NLL bookkeeping agrees with the model's own loss; IFD and entropy."""

from __future__ import annotations

import math

import pytest
import torch

from domdistill.models.tiny import build_tiny_model, train_tokenizer
from domdistill.selection.scoring import completion_stats, entropy_scores, ifd_scores

TEXTS = ["add 12 + 34. 2+4=6, 1+3=4. The answer is: 46", "reverse abc. c b a. The answer is: cba",
         "compare 7 and 9. 9 > 7. The answer is: 9"] * 20


@pytest.fixture(scope="module")
def tiny():
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = build_tiny_model("nano", tok, seed=0)
    model.eval()
    return model, tok


def test_completion_nll_matches_model_loss_on_completion_tokens(tiny):
    model, tok = tiny
    prompt, completion = "add 12 + 34.", " 2+4=6. The answer is: 46"
    stats = completion_stats(model, tok, [prompt, "reverse abc."], [completion, " cba"], batch_size=2)[0]
    p_ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + c_ids])
    labels = ids.clone()
    labels[0, :len(p_ids)] = -100
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss.item()
    assert stats.tokens == len(c_ids)
    assert math.isclose(stats.mean_nll, loss, rel_tol=1e-4)


def test_ifd_is_ratio_of_conditional_to_plain_perplexity(tiny):
    model, tok = tiny
    prompts, gens = ["add 12 + 34.", "compare 7 and 9."], [" The answer is: 46", ""]
    scores = ifd_scores(model, tok, prompts, gens)
    cond = completion_stats(model, tok, prompts[:1], gens[:1])[0]
    alone = completion_stats(model, tok, [""], gens[:1])[0]
    assert math.isclose(scores[0], math.exp(cond.mean_nll) / math.exp(alone.mean_nll), rel_tol=1e-9)
    assert scores[1] == math.inf  # empty generation: maximally uncertain


def test_entropy_is_bounded_by_log_vocab(tiny):
    model, tok = tiny
    ent = entropy_scores(model, tok, ["add 12 + 34."], [" The answer is: 46"])[0]
    assert 0 < ent <= math.log(len(tok)) + 1e-6
