"""aggregate.Fold: a node stream folded into the non-streaming answer."""

from __future__ import annotations

from herd.router.api.aggregate import Fold


def test_chat_fold_concatenates_and_keeps_the_final_chunk():
    fold = Fold(chat=True)
    chunks = [
        {
            "model": "m",
            "message": {"role": "assistant", "content": "", "thinking": "hm"},
        },
        {"model": "m", "message": {"role": "assistant", "content": "Hel"}},
        {
            "model": "m",
            "message": {
                "role": "assistant",
                "content": "lo",
                "tool_calls": [{"function": {"name": "f", "arguments": {}}}],
            },
            "logprobs": [{"token": "lo"}],
        },
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": 3,
        },
    ]
    assert [fold.feed(c) for c in chunks] == [False, False, False, True]
    out = fold.result()
    assert out["message"]["content"] == "Hello"
    assert out["message"]["thinking"] == "hm"
    assert out["message"]["tool_calls"][0]["function"]["name"] == "f"
    assert out["logprobs"] == [{"token": "lo"}]
    assert out["done"] is True and out["eval_count"] == 3


def test_generate_fold_and_single_object_answers():
    fold = Fold(chat=False)
    fold.feed({"response": "a", "done": False})
    fold.feed({"response": "b", "done": True, "context": [1, 2]})
    assert fold.result() == {"response": "ab", "done": True, "context": [1, 2]}
    whole = Fold(chat=False)  # a node that answered with one object
    assert whole.feed({"response": "all", "done": True})
    assert whole.result()["response"] == "all"
