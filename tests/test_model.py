import torch

from guppylm.generate import SamplingConfig, stream, stream_without_cache
from guppylm.model import GPT, PRESETS, GPTConfig


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**vars(PRESETS["guppy-tiny"]), "vocab_size": 97, **overrides})).eval()


def test_guppy_9m_has_about_8_7m_parameters():
    model = GPT(GPTConfig(**{**vars(PRESETS["guppy-9m"]), "vocab_size": 4096}))
    assert 8.6e6 < model.num_params() < 8.8e6
    assert model.lm_head.weight is model.wte.weight


def test_changing_a_later_token_never_changes_earlier_logits():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_logits_equal_full_recomputation():
    model = tiny_model()
    idx = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        full = model(idx)
        caches = [{} for _ in model.h]
        first = model(idx[:, :10], caches=caches)
        steps = [model(idx[:, t:t + 1], caches=caches) for t in range(10, 30)]
    cached = torch.cat([first] + steps, dim=1)
    assert torch.allclose(full, cached, atol=1e-5)


def test_kv_cache_generation_equals_recomputation():
    model = tiny_model()
    prompt = [5, 6, 7, 8]
    for cfg in (SamplingConfig(temperature=0, max_new_tokens=40),
                SamplingConfig(temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=40, seed=3)):
        assert list(stream(model, prompt, cfg)) == list(stream_without_cache(model, prompt, cfg))


def test_generation_stops_at_stop_token_and_at_limits():
    model = tiny_model()
    greedy = SamplingConfig(temperature=0, max_new_tokens=30)
    tokens = list(stream(model, [1, 2, 3], greedy))
    assert len(tokens) == 30
    stop = tokens[5]
    assert list(stream(model, [1, 2, 3], greedy, stop_ids=(stop,))) == tokens[:tokens.index(stop)]
    near_end = [i % 97 for i in range(model.cfg.context - 4)]
    assert len(list(stream(model, near_end, greedy))) <= 4


def test_seed_makes_sampling_repeatable():
    model = tiny_model()
    cfg = SamplingConfig(temperature=1.2, top_k=0, top_p=1.0, max_new_tokens=25, seed=7)
    a = list(stream(model, [1, 2], cfg))
    assert a == list(stream(model, [1, 2], cfg))
    cfg.seed = 8
    assert a != list(stream(model, [1, 2], cfg))


def test_loss_ignores_masked_targets():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    masked = targets.clone()
    masked[:, :8] = -100
    logits = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 97),
                                                 targets[:, 8:].reshape(-1))
    assert torch.allclose(model(idx, masked), expected, atol=1e-5)


def test_the_loss_is_the_same_with_the_output_layer_on_every_row(monkeypatch):
    """On a GPU the output layer runs on every position (choosing the scored rows would make
    it wait for the host): the weighted loss must be the one the CPU computes on the scored
    rows alone, and so must its gradients."""
    from guppylm import model as model_mod

    model = tiny_model()
    idx = torch.randint(0, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    targets[0, :5] = targets[1, 9:] = -100
    weights = torch.ones(2, 16)
    weights[0, 7] = weights[1, 2] = 4.0

    def loss_and_grad():
        model.zero_grad()
        loss = model(idx, targets, weights=weights)
        loss.backward()
        return loss.detach(), model.wte.weight.grad.clone()

    chosen_rows = loss_and_grad()
    monkeypatch.setattr(model_mod, "only_scored_rows", lambda x: False)
    every_row = loss_and_grad()
    assert torch.allclose(chosen_rows[0], every_row[0], atol=1e-6)
    assert torch.allclose(chosen_rows[1], every_row[1], atol=1e-6)
    unweighted = torch.nn.functional.cross_entropy(model(idx).reshape(-1, 97),
                                                   targets.reshape(-1))
    assert torch.allclose(model(idx, targets), unweighted, atol=1e-5)


def test_sampling_keeps_the_top_k_then_the_top_p_and_draws_by_probability():
    from guppylm.generate import SamplingConfig, pick_token

    logits = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15]))
    gen = torch.Generator().manual_seed(0)

    def draws(**kw) -> torch.Tensor:
        cfg = SamplingConfig(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, **kw})
        picks = torch.tensor([pick_token(logits, cfg, gen) for _ in range(4000)])
        return torch.bincount(picks, minlength=4) / len(picks)

    assert torch.allclose(draws(), torch.tensor([0.05, 0.5, 0.3, 0.15]), atol=0.03)
    assert torch.allclose(draws(top_k=2), torch.tensor([0, 0.5 / 0.8, 0.3 / 0.8, 0]), atol=0.03)
    # 0.5 holds less than 0.7, 0.5 + 0.3 holds it: the two likeliest stay
    assert torch.allclose(draws(top_p=0.7), torch.tensor([0, 0.5 / 0.8, 0.3 / 0.8, 0]), atol=0.03)
    assert draws(top_p=0.4)[1] == 1.0  # the likeliest alone holds 0.4
    assert pick_token(logits, SamplingConfig(temperature=0), gen) == 1
