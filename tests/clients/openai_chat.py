"""The official `openai` Python client against `dsocr serve` (run by tests/server.rs).

Usage: openai_chat.py BASE_URL IMAGE EXPECTED_TEXT EXPECTED_TOKENS
The server runs the scripted tiny model, whose output for any image is EXPECTED_TEXT then EOS
when the repeat guard is n = 2 over 256 tokens.
"""
import base64
import sys

import openai
from openai import OpenAI

base, image, expected, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
with open(image, "rb") as f:
    url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": ""}]}]
extra = {"dsocr": {"ngram_size": 2, "ngram_window": 256}}

models = client.models.list()
assert len(models.data) == 1 and models.data[0].owned_by == "dsocr", models

answer = client.chat.completions.create(model="deepseek-ai/DeepSeek-OCR", messages=messages, extra_body=extra)
choice = answer.choices[0]
assert choice.message.role == "assistant", choice
assert choice.message.content == expected, repr(choice.message.content)
assert choice.finish_reason == "stop", choice.finish_reason
assert answer.usage.completion_tokens == tokens, answer.usage
assert answer.usage.prompt_tokens > 273, answer.usage

stream = client.chat.completions.create(
    model="deepseek-ai/DeepSeek-OCR",
    messages=messages,
    stream=True,
    stream_options={"include_usage": True},
    extra_body=extra,
)
text, finish, usage, chunks = "", None, None, 0
for chunk in stream:
    chunks += 1
    if chunk.choices:
        delta = chunk.choices[0].delta
        if delta.content:
            text += delta.content
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    if chunk.usage:
        usage = chunk.usage
assert text == expected, repr(text)
assert finish == "stop", finish
assert usage is not None and usage.completion_tokens == tokens, usage
assert chunks > 3, chunks

# The token limit is `length`, never `stop`.
short = client.chat.completions.create(model="x", messages=messages, max_tokens=3, extra_body=extra)
assert short.choices[0].finish_reason == "length", short.choices[0]
assert short.usage.completion_tokens == 3, short.usage

try:
    client.chat.completions.create(model="x", messages=[{"role": "user", "content": "no image here"}])
    raise AssertionError("a request without an image must fail")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "no image" in str(e), e

print("openai client: ok")
