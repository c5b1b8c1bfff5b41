import pytest

from guppylm import data, persona
from guppylm.chat_format import REPLY, TOPIC, chat_texts, decode_chat, encode_chat, topics_of
from guppylm.errors import GuppyError
from guppylm.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from conftest import TINY_PERSONA

    path = tmp_path_factory.mktemp("p") / "minnow.toml"
    path.write_text(TINY_PERSONA)
    return data.compose(persona.load(str(path)), data.DataConfig(n=1500))


def test_vocabulary_is_a_multiple_of_64_and_no_larger_than_the_data_supports(tiny_data):
    tok = train_tokenizer(chat_texts(tiny_data["train"]), vocab_size=4096)
    assert tok.vocab_size % 64 == 0
    assert tok.vocab_size < 4096  # a tiny persona cannot support 4,096 tokens
    bigger = train_tokenizer(chat_texts(tiny_data["train"]), vocab_size=tok.vocab_size + 640)
    assert bigger.vocab_size == tok.vocab_size


def test_round_trip_and_assistant_mask(tiny_data, tmp_path):
    tok = train_tokenizer(chat_texts(tiny_data["train"]), topics=topics_of(tiny_data["train"]))
    tok.save(tmp_path / "tokenizer.json")
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert sorted(tok.topics.values()) == ["food", "hello", "water"]
    for conv in tiny_data["test"][:50]:
        ids, mask = encode_chat(tok, conv["messages"])
        assert decode_chat(tok, ids) == conv["messages"]
        assert len(ids) == len(mask)
        # learned: each assistant turn's topic token, then its reply and end marker
        topics = [i for i, m in zip(ids, mask, strict=True) if m == TOPIC]
        replies = [i for i, m in zip(ids, mask, strict=True) if m == REPLY]
        said = [m for m in conv["messages"] if m["role"] == "assistant"]
        assert topics == [tok.topic_id(m["topic"]) for m in said]
        assert replies == [i for m in said for i in tok.encode(m["content"]) + [tok.end_id]]


def test_generation_prompt_and_any_unicode(tiny_data):
    tok = train_tokenizer(chat_texts(tiny_data["train"]))
    text = "HÉLLO 🐟 рыбка   guppy!!"
    ids, mask = encode_chat(tok, [{"role": "user", "content": text}], add_generation_prompt=True)
    assert ids[-1] == tok.assistant_id and not any(mask)
    # spaces normalised and case folded, exactly as in the training data
    assert decode_chat(tok, ids)[0]["content"] == "héllo 🐟 рыбка guppy!!"
    shouted, _ = encode_chat(tok, [{"role": "user", "content": "ARE YOU  HUNGRY?"}])
    plain, _ = encode_chat(tok, [{"role": "user", "content": "are you hungry?"}])
    assert shouted == plain


def test_unreadable_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{nope")
    with pytest.raises(GuppyError, match="not a readable tokenizer.json"):
        Tokenizer.load(bad)


def test_a_vocabulary_too_small_for_bytes_is_refused(tiny_data):
    with pytest.raises(GuppyError, match="--vocab-size 100: too small"):
        train_tokenizer(chat_texts(tiny_data["train"]), vocab_size=100)
