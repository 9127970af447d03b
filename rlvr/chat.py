"""Chat formats as hub models have them: tokenizers, chat templates, end-of-turn tokens.

A tiny model is built with one of three tokenizer styles (`model.tiny.tokenizer`):

  word    a word-level tokenizer and a one-line template (the toy tasks); no token ends a
          turn, so an EOS (`</s>`) is appended after a final answer
  chatml  byte-level BPE with Qwen2.5's special tokens and ChatML template: `<|im_start|>`,
          `<|im_end|>` (eos: ends a turn), `<|endoftext|>` (pad, and a second stop id in
          generation_config); a default system message; digits split one by one
  llama3  byte-level BPE with Llama 3's: `<|begin_of_text|>` (in the template and added by the
          tokenizer), `<|start_header_id|>role<|end_header_id|>`, `<|eot_id|>` (eos),
          `<|eom_id|>` and `<|end_of_text|>` (three stop ids in generation_config); no pad token

Special tokens get the last ids, after the learned vocabulary, as in the real models (code
that assumes pad = 0 fails on them). Real models (any hub id or folder) bring their own;
nothing below assumes a style: it reads what the tokenizer and generation_config say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

IGNORE = -100  # label of a token that is not a target

# the pre-tokenizer regexes of the real tokenizers (tokenizer.json of Qwen2.5 and Llama 3)
_QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

WORD_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
# Qwen2's ChatML template (Qwen2.5's without its tool-calling branches and with Qwen2's shorter
# default system message)
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Llama 3's template without the tool and date header blocks
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

STYLES = {
    "chatml": {
        "split": _QWEN_SPLIT,
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "roles": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "stop": ["<|im_end|>", "<|endoftext|>"],
        "template": CHATML_TEMPLATE,
    },
    "llama3": {
        "split": _LLAMA3_SPLIT,
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"],
        "roles": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "stop": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        "template": LLAMA3_TEMPLATE,
    },
}
TOKENIZER_STYLES = ("word", *STYLES)


# ------------------------------------------------------------------------------------ tokenizers


def train_tokenizer(texts: Iterable[str], style: str = "word", vocab_size: int = 2048):
    """A tokenizer of `style` (word, chatml, llama3) trained on `texts`, as a PreTrainedTokenizerFast."""
    if style == "word":
        return train_word_tokenizer(texts)
    if style not in STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}; available: {', '.join(TOKENIZER_STYLES)}")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    s = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(s["split"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(s["specials"]), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(s["specials"])  # after the learned vocabulary: the last ids, as in the real models
    bos = s["roles"].get("bos_token")
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, **s["roles"], model_max_length=131072)
    out.chat_template = s["template"]
    return out


WORD_SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_word_tokenizer(texts: Iterable[str]):
    """A word-level tokenizer (whitespace split) whose vocabulary is every word in `texts`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=WORD_SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(WORD_SPECIALS.values()), min_frequency=1)
    tok.train_from_iterator(texts, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, **WORD_SPECIALS)
    out.chat_template = WORD_TEMPLATE
    return out


def style_stop_ids(tokenizer, style: str) -> list[int]:
    """The ids generation stops on for a tokenizer built in `style` (its generation_config's eos_token_id)."""
    if style == "word":
        return [tokenizer.eos_token_id]
    return [tokenizer.convert_tokens_to_ids(t) for t in STYLES[style]["stop"]]


def stop_token_ids(model_path: str | Path, tokenizer=None) -> list[int]:
    """Every id that ends a turn for the model at `model_path`: the tokenizer's eos and each
    `eos_token_id` of its generation_config (Llama 3 lists three, Qwen2.5 two)."""
    from transformers import GenerationConfig

    if tokenizer is None:
        from rlvr.models import load_tokenizer

        tokenizer = load_tokenizer(str(model_path))
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        gen = GenerationConfig.from_pretrained(str(model_path))
    except OSError:  # a folder without generation_config.json
        gen = None
    eos = getattr(gen, "eos_token_id", None)
    ids |= {eos} if isinstance(eos, int) else set(eos or ())
    return sorted(ids)


# ------------------------------------------------------------------------------------ rendering


class ChatFormatError(ValueError):
    """A conversation the tokenizer's chat template cannot be split into turns, or a message list
    that is not one."""


ROLES = ("system", "user", "assistant")


def check_messages(value, where: str) -> list[dict]:
    """`value` as a list of {"role", "content"} messages (other keys dropped), or a ChatFormatError
    saying what is wrong with it."""
    if not isinstance(value, list) or not value:
        raise ChatFormatError(f"{where} must be a non-empty list of messages")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ChatFormatError(f"{where}: each message needs a role ({'/'.join(ROLES)}) and a content string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` rendered by the tokenizer's own chat template (its special tokens,
    such as a BOS the template writes, are read as such and not added twice)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, row: dict) -> list[int]:
    """A prompt as the model sees it: `messages` through the chat template with the generation
    prompt; a plain `prompt` string as text (a completion-style prompt, special tokens added)."""
    if "messages" in row:
        if getattr(tokenizer, "chat_template", None):
            return render_chat(tokenizer, row["messages"], add_generation_prompt=True)
        return tokenizer("\n".join(m["content"] for m in row["messages"]), add_special_tokens=False)["input_ids"]
    return tokenizer(row["prompt"])["input_ids"]


def assistant_turns(tokenizer, messages: list[dict], stop_ids: Iterable[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids, [(start, end)] of each assistant turn) of a conversation.

    A turn's tokens are those between the rendering of the turns before it (with the generation
    prompt) and the rendering up to and including it, cut after its first end-of-turn token
    (`<|im_end|>`, `<|eot_id|>`: what the model must learn to emit; the template's newline after
    it is not the answer). A final assistant turn whose template closes it with no stop token
    gets the tokenizer's EOS appended, so the model learns to stop.
    """
    stop = set(stop_ids)
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render_chat(tokenizer, messages[:i], add_generation_prompt=True))
        upto = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full[: len(upto)] != upto or start > len(upto):
            raise ChatFormatError("the chat template does not render earlier turns as a prefix of later ones; cannot find the assistant's tokens")
        end = next((j + 1 for j in range(start, len(upto)) if full[j] in stop), len(upto))
        spans.append((start, end))
    if spans and messages[-1]["role"] == "assistant":
        start, end = spans[-1]
        if not any(t in stop for t in full[start:end]) and tokenizer.eos_token_id is not None:
            full = full[:end] + [tokenizer.eos_token_id]
            spans[-1] = (start, end + 1)
        else:
            full = full[:end]  # nothing after the last answer's end of turn
    return full, spans


def sft_example(tokenizer, messages: list[dict], stop_ids: Iterable[int]) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are the ids of every assistant turn (up to its end-of-turn
    token), IGNORE on every other token (system, user, template text)."""
    ids, spans = assistant_turns(tokenizer, messages, stop_ids)
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return ids, labels


def answer_example(tokenizer, messages: list[dict], stop_ids: Iterable[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a conversation ending with the assistant's answer: the prompt
    is everything before the answer, rendered with the generation prompt; the answer ends with
    the template's own end of turn."""
    ids, spans = assistant_turns(tokenizer, messages, stop_ids)
    start, end = spans[-1]
    return ids[:start], ids[start:end]
