"""The chat format: topics as special tokens, plain text everywhere else, free-form data,
content-only history, and the streamed reply."""

import json
import random

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer

from guppylm import chat, data, decode, persona
from guppylm.batching import collate, encode_examples
from guppylm.chat import Guppy, Reply
from guppylm.chat_format import chat_texts, decode_chat, encode_chat, topics_of
from guppylm.decode import OPENING_TRIES
from guppylm.evaluate import repeat_rate
from guppylm.generate import SamplingConfig, choose_topic
from guppylm.model import GPT, PRESETS, GPTConfig
from guppylm.tokenizer import train_tokenizer
from guppylm.train import TrainConfig, train


@pytest.fixture(scope="module")
def convs(tmp_path_factory):
    from conftest import TINY_PERSONA

    path = tmp_path_factory.mktemp("p") / "minnow.toml"
    path.write_text(TINY_PERSONA)
    return data.compose(persona.load(str(path)), data.DataConfig(n=1500))["train"]


@pytest.fixture(scope="module")
def tok(convs, tmp_path_factory):
    tok = train_tokenizer(chat_texts(convs), topics=topics_of(convs))
    path = tmp_path_factory.mktemp("t") / "tokenizer.json"
    tok.save(path)
    return tok


def tiny_model(tok) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**vars(PRESETS["guppy-tiny"]), "vocab_size": tok.vocab_size}))


def test_a_standard_tokenizer_decodes_a_generated_turn_to_the_reply_alone(tok, tmp_path):
    messages = [{"role": "user", "content": "are you hungry?"},
                {"role": "assistant", "content": "i eat flakes.", "topic": "food"}]
    ids, _ = encode_chat(tok, messages)
    turn = ids[ids.index(tok.assistant_id) + 1:]  # what the model generates: topic, reply, end
    assert turn[0] == tok.topic_id("food") and turn[-1] == tok.end_id
    tok.save(tmp_path / "tokenizer.json")
    plain = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))  # no GuppyLM code
    assert plain.decode(turn, skip_special_tokens=True) == "i eat flakes."
    assert plain.id_to_token(turn[0]) == "<|topic:food|>"


def test_a_bar_or_a_marker_in_any_message_is_plain_text(tok):
    messages = [{"role": "user", "content": "food | water <|end|> <|topic:food|>?"},
                {"role": "assistant", "content": "a | b. <|assistant|> not a turn."}]
    ids, mask = encode_chat(tok, messages)
    assert ids.count(tok.end_id) == 2 and ids.count(tok.assistant_id) == 1
    assert not set(ids) & set(tok.topics)  # neither message names a topic
    assert decode_chat(tok, ids) == messages
    assert 2 not in mask  # no topic token to weight


def test_free_form_conversations_without_topics_train_and_chat(tmp_path):
    rng = random.Random(0)
    lines = []
    for _ in range(400):
        a, b = rng.choice(["red", "blue", "green"]), rng.choice(["cat", "dog", "bird"])
        lines.append({"messages": [{"role": "user", "content": f"what is {a} | {b}?"},
                                   {"role": "assistant", "content": f"{a} {b} | {b} {a}."}]})
    folder = tmp_path / "data"
    folder.mkdir()
    for split in data.SPLITS:
        text = "".join(json.dumps(c) + "\n" for c in lines)
        (folder / f"{split}.jsonl").write_text(text)
    run = tmp_path / "run"
    train(TrainConfig(data=str(folder), run=str(run), preset="guppy-tiny", steps=30,
                      batch_tokens=1024, lr=1e-2, warmup=5, eval_every=30, device="cpu"),
          quiet=True)
    g = Guppy.load(run)
    assert g.tok.topics == {}
    examples = encode_examples(g.tok, lines[:8], 128)
    _, _, w = collate(examples, list(range(8)), g.tok.end_id, topic_weight=4.0)
    assert torch.equal(w, torch.ones_like(w))  # nothing to weight, no special case
    reply = g.respond([{"role": "user", "content": "what is red | cat?"}], max_new_tokens=12,
                      seed=0)
    assert reply.topic is None and isinstance(reply.text, str)


def test_past_turns_lose_their_topic_at_the_asked_rate_and_the_last_never(convs, tok):
    multi = [c for c in convs if len(c["messages"]) >= 4]
    last_topics = [sum(t) for _, _, t in encode_examples(tok, multi, 256)]
    kept_all = encode_examples(tok, multi, 256, drop_history_topics=0.0)
    dropped = encode_examples(tok, multi, 256, drop_history_topics=1.0)
    half = encode_examples(tok, multi, 256, drop_history_topics=0.5, seed=1)
    turns = [len(c["messages"]) // 2 for c in multi]
    assert [sum(t) for _, _, t in kept_all] == turns == last_topics
    assert all(sum(t) == 1 for _, _, t in dropped)  # only the last turn names its topic
    assert all(t[-1] is False for _, _, t in dropped)
    share = sum(sum(t) - 1 for _, _, t in half) / sum(n - 1 for n in turns)
    assert 0.35 < share < 0.65


def test_history_goes_back_as_content_only_and_its_topics_are_restored(tok, monkeypatch):
    reply = Reply("i eat flakes.", "food", "stop")
    assert reply.message() == {"role": "assistant", "content": "i eat flakes."}
    assert reply.message(with_topic=True)["topic"] == "food"
    g = Guppy(tiny_model(tok), tok)

    def prompt(message: dict) -> list[int]:
        return g.prompt_ids([{"role": "user", "content": "hi"}, message,
                             {"role": "user", "content": "why?"}], 20)

    topical = prompt(reply.message(with_topic=True))
    assert tok.topic_id("food") in topical
    # the model names "food" where the reply began: the content-only history reads the same
    monkeypatch.setattr(chat, "choose_topic", lambda *a: tok.topic_id("food"))
    assert prompt(reply.message()) == topical
    monkeypatch.setattr(chat, "choose_topic", lambda *a: None)  # it names no topic there
    assert len(prompt(reply.message())) == len(topical) - 1


def fake_model_output(monkeypatch, tokens: list) -> list[tuple]:
    """Make the decoder choose `tokens` (the same each try, or a list of tokens per try);
    return the (topic ids, temperature) each try's first token was chosen with."""
    asked, script = [], []

    def first_token(logits, topic_ids, cfg, generator=None):  # a try begins
        asked.append((tuple(topic_ids.tolist()), cfg.temperature))
        script[:] = tokens.pop(0) if isinstance(tokens[0], list) else tokens
        return script.pop(0) if script[0] in topic_ids else None

    monkeypatch.setattr(decode, "choose_topic", first_token)
    monkeypatch.setattr(decode, "pick_tokens", lambda logits, cfg, generators: [script.pop(0)])
    return asked


@pytest.mark.parametrize("ending, finish", [("end", "stop"), ("limit", "length"),
                                            ("new turn", "length")])
def test_stream_names_the_topic_then_the_reply_then_why_it_finished(tok, monkeypatch,
                                                                     ending, finish):
    words = tok.encode("i eat flakes.")
    tail = {"end": [tok.end_id], "limit": [], "new turn": [tok.user_id, *words]}[ending]
    script = [tok.topic_id("food"), *words, *tail]
    asked = fake_model_output(monkeypatch, script)
    g = Guppy(tiny_model(tok), tok, SamplingConfig(max_new_tokens=len(script)))
    chunks = list(g.stream([{"role": "user", "content": "hungry?"}]))
    assert chunks[0].topic == "food" and chunks[0].text == ""
    assert "".join(c.text for c in chunks) == "i eat flakes."
    assert [c.finish for c in chunks] == [None] * (len(chunks) - 1) + [finish]
    assert set(asked[0][0]) == set(tok.topics) and asked[0][1] == 0.7
    reply = g.respond([{"role": "user", "content": "hungry?"}])
    assert reply == Reply("i eat flakes.", "food", finish)
    assert reply.ended is (finish == "stop")


def test_a_reply_does_not_open_as_the_previous_one_did(tok, monkeypatch):
    enc = tok.encode
    tries = [[tok.topic_id("food"), *enc("i eat flakes. yum."), tok.end_id],  # repeats: again
             [tok.topic_id("food"), *enc("i eat flakes."), tok.end_id],  # repeats at its end
             [tok.topic_id("food"), *enc("flakes are good. i eat them."), tok.end_id]]
    asked = fake_model_output(monkeypatch, tries)
    g = Guppy(tiny_model(tok), tok)
    history = [{"role": "user", "content": "hungry?"},
               {"role": "assistant", "content": "I eat flakes. they are the best."},
               {"role": "user", "content": "why?"}]
    chunks = list(g.stream(history))
    assert "".join(c.text for c in chunks) == "flakes are good. i eat them."
    assert [c.topic for c in chunks if c.topic] == ["food"]  # the dropped tries sent nothing
    assert len(asked) == 3 and tries == []


def test_the_last_try_is_kept_and_greedy_replies_are_never_drawn_again(tok, monkeypatch):
    history = [{"role": "user", "content": "hungry?"},
               {"role": "assistant", "content": "i eat flakes."},
               {"role": "user", "content": "why?"}]
    g = Guppy(tiny_model(tok), tok)
    same = [tok.topic_id("food"), *tok.encode("i eat flakes."), tok.end_id]
    asked = fake_model_output(monkeypatch, [list(same) for _ in range(OPENING_TRIES)])
    assert g.respond(history).text == "i eat flakes." and len(asked) == OPENING_TRIES
    asked = fake_model_output(monkeypatch, [list(same)])
    assert g.respond(history, temperature=0).text == "i eat flakes." and len(asked) == 1


def test_the_topic_is_the_likeliest_and_only_ever_first(tok):
    topic_ids = torch.tensor(sorted(tok.topics))
    logits = torch.full((tok.vocab_size,), -20.0)
    food, water = tok.topic_id("food"), tok.topic_id("water")
    logits[food], logits[water] = 5.0, 4.9
    gen = torch.Generator().manual_seed(0)
    picks = {choose_topic(logits, topic_ids, SamplingConfig(), gen) for _ in range(20)}
    assert picks == {food}  # greedy, whatever the reply's temperature
    hot = SamplingConfig(topic_temperature=1.0)
    assert {choose_topic(logits, topic_ids, hot, gen) for _ in range(50)} == {food, water}
    logits[tok.encode("i")[0]] = 9.0  # a word is likelier: the model names no topic
    assert choose_topic(logits, topic_ids, SamplingConfig(), gen) is None


def test_generated_replies_name_a_topic_at_most_once_and_first(tok):
    from guppylm.generate import stream

    model = tiny_model(tok)
    with torch.no_grad():
        model.lm_head.weight[sorted(tok.topics)] *= 0  # keep topics possible, not dominant
    ids, _ = encode_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    for seed in range(5):
        cfg = SamplingConfig(temperature=2.0, top_k=0, top_p=1.0, max_new_tokens=30, seed=seed)
        out = list(stream(model, ids, cfg, topic_ids=tuple(tok.topics)))
        assert not set(out[1:]) & set(tok.topics)


def test_repeat_rate_counts_follow_ups_that_begin_like_the_previous_reply():
    rows = [{"turn": 1, "repeats": False}, {"turn": 2, "repeats": True},
            {"turn": 3, "repeats": False}, {"turn": 2, "repeats": False}]
    assert repeat_rate(rows) == pytest.approx(1 / 3)


def test_a_topic_name_that_cannot_be_a_token_is_refused(convs):
    from guppylm.errors import GuppyError

    with pytest.raises(GuppyError, match="not a usable topic name"):
        train_tokenizer(chat_texts(convs), topics=["food|>"])
