"""Chat back-ends shared by everything that talks to a chat model: the LLM QA generator and the LLM
judge (:class:`lift_ray.evaluate.metrics.LLMJudge`, used by ``lift-ray eval`` and ``lift-ray niah``).

* :class:`OpenAIChatBackend` — an OpenAI-compatible endpoint (``POST {base_url}/chat/completions``).
* :class:`LocalChatBackend` — greedy generation on an already loaded HF model with its chat template.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Protocol


class ChatError(RuntimeError):
    """A chat endpoint failed: unreachable, an HTTP error, or a reply that is not the expected JSON."""


class ChatBackend(Protocol):
    """Anything that answers a chat: ``complete(messages, max_tokens) -> str``."""

    def complete(self, messages: list[dict], max_tokens: int) -> str: ...

    def identity(self) -> str: ...


class PromptTooLong(ValueError):
    """The prompt does not fit the model's positions."""


class LocalChatBackend:
    """Greedy generation with the tokenizer's chat template on an already loaded HF model.

    Args:
        model: a causal LM (the base model itself or another one).
        tokenizer: its tokenizer.
        name: identifies the model in cache keys (default: the model's ``name_or_path``).
    """

    def __init__(self, model, tokenizer, name: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__

    def identity(self) -> str:
        return f"local:{self.name}"

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n\n".join(m["content"] for m in messages) + "\n\n"
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None) or 10**9
        room = limit - len(ids)
        if room < 16:
            raise PromptTooLong(f"prompt of {len(ids)} tokens leaves no room to answer in {limit} positions")
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        vocab = tok.get_vocab()
        # stop at the end of the assistant turn whichever marker the template uses
        eos = sorted({t for t in (tok.eos_token_id, vocab.get("<|im_end|>"), vocab.get("<|eot_id|>")) if t is not None})
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=min(max_tokens, room),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                eos_token_id=eos or None,
            )
        return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


class OpenAIChatBackend:
    """An OpenAI-compatible chat endpoint: POST ``{base_url}/chat/completions``, temperature 0.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (a URL ending in /chat/completions is used as is).
        model: the model name the server expects.
        api_key: sent as a Bearer token when given.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60):
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def identity(self) -> str:
        return f"openai:{self.url}#{self.model}"

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            raise ChatError(f"{self.url} answered HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ChatError(f"cannot reach {self.url}: {exc}") from None
        except json.JSONDecodeError:
            raise ChatError(f"{self.url} did not answer JSON") from None
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ChatError(f"{self.url} answered without choices[0].message.content") from None


