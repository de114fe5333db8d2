import pytest
import torch

from rlhfkit.config import RewardConfig
from rlhfkit.models.loading import load_sequence_classifier, load_tokenizer
from rlhfkit.models.reward import RewardScorer, build_reward_model, reward_forward, rm_inputs


@pytest.mark.parametrize("spec", ["tiny", "tiny-minilm"])
def test_scores_do_not_depend_on_padding(spec):
    tok, model = load_tokenizer(spec), load_sequence_classifier(spec)
    prompts = [{"prompt": "The movie was"}, {"messages": [{"role": "user", "content": "A much longer prompt with many more words in it"}]}]
    responses = ["great", "terrible, boring and far too long for anyone to sit through"]
    with torch.no_grad():
        batched = reward_forward(model, rm_inputs(tok, prompts, responses, 128))
        alone = torch.cat([reward_forward(model, rm_inputs(tok, [p], [r], 128)) for p, r in zip(prompts, responses)])
        assert torch.allclose(batched, alone, atol=1e-5)
        if spec == "tiny":  # a causal LM pools the last non-pad token with positions from the mask
            left = reward_forward(model, rm_inputs(tok, prompts, responses, 128, padding_side="left"))
            assert torch.allclose(left, alone, atol=1e-5)
    assert model.config.pad_token_id == tok.pad_token_id


def test_mean_pooling_ignores_padding_and_the_pooler_and_a_saved_model_scores_the_same(tmp_path):
    tok, model = load_tokenizer("tiny-minilm"), build_reward_model(RewardConfig(model="tiny-minilm", pooling="mean"), None)
    model.eval()
    prompts = [{"prompt": "The movie was"}, {"messages": [{"role": "user", "content": "A much longer prompt with many more words in it"}]}]
    responses = ["great", "terrible, boring and far too long for anyone to sit through"]
    with torch.no_grad():
        batched = reward_forward(model, rm_inputs(tok, prompts, responses, 128))
        alone = torch.cat([reward_forward(model, rm_inputs(tok, [p], [r], 128)) for p, r in zip(prompts, responses)])
        assert torch.allclose(batched, alone, atol=1e-5)  # the short row's pad tokens are not averaged in
        # The score is the head on the mean of the last hidden states; the [CLS] pooler plays no part.
        one = rm_inputs(tok, prompts[:1], responses[:1], 128)
        assert torch.allclose(model.classifier(model.bert(**one).last_hidden_state.mean(1))[:, 0], alone[:1], atol=1e-5)
        cls_model = build_reward_model(RewardConfig(model="tiny-minilm", pooling="cls"), None).eval()
        assert not torch.allclose(reward_forward(cls_model, rm_inputs(tok, prompts, responses, 128)), batched, atol=1e-3)
        model.bert.pooler.dense.weight.add_(1.0)
        assert torch.allclose(reward_forward(model, rm_inputs(tok, prompts, responses, 128)), batched, atol=1e-6)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = RewardScorer.load(tmp_path / "rm")  # the pooling choice travels in config.json
    assert torch.allclose(scorer.score(prompts, responses), batched, atol=1e-5)
