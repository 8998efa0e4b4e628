"""Chat examples: `messages` rendered by the tokenizer's chat template, assistant tokens as targets.

A conversation is a list of {"role", "content"} messages. Its tokens are those of the whole
conversation rendered by the chat template of the run's tokenizer (a local Hugging Face folder
with a `chat_template` in tokenizer_config.json or chat_template.jinja). The targets are the
tokens of every assistant turn: what the template writes after the assistant header (the
header is what `add_generation_prompt` adds) up to the end of the turn, its end-of-turn
token(s) included. System and user turns and the template's scaffolding around them are not
targets. No <eos> is appended: the template ends the last turn. A conversation longer than
data.max_length is cut there (unpacked rows), losing the end of its last turns.

The spans are found without `{% generation %}` markers, which few templates have: for message
j, the tokens of messages[:j] rendered, of messages[:j] with the generation prompt, and of
messages[:j+1] must each be a prefix of the next; the assistant's targets are the difference
between the last two. A template that renders earlier turns differently once later ones follow
(e.g. one that drops the reasoning of earlier assistant turns) is not prefix-stable: it is
refused with the message's position, since no span would be right. With `data.mask_prompt:
false` every token of the conversation is a target.
"""

from __future__ import annotations

from ..errors import DistillError, clip
from .tokenizer import HFTokenizer

ROLES_HINT = "[{\"role\": \"user\", \"content\": \"...\"}, {\"role\": \"assistant\", \"content\": \"...\"}]"


def check_messages(messages, where: str) -> list[dict]:
    """`messages` as a list of {"role": str, "content": str}; anything else is refused."""
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages)
    if not ok:
        raise DistillError(f"{where}: 'messages' must be a non-empty list of messages with string "
                           f"'role' and 'content' fields, e.g. {ROLES_HINT}.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_tokenizer(tokenizer) -> HFTokenizer:
    """The run's tokenizer, if it can render chats; otherwise an error naming the fix."""
    if not isinstance(tokenizer, HFTokenizer):
        raise DistillError("Chat examples ('messages') are rendered by a tokenizer's chat template; "
                           "the byte tokenizer has none. Set data.tokenizer to a local Hugging Face "
                           "tokenizer folder whose tokenizer_config.json has a chat_template.")
    if not tokenizer.tok.chat_template:
        raise DistillError(f"The tokenizer in '{tokenizer.name}' has no chat template, which chat "
                           "examples ('messages') need: add a 'chat_template' to its "
                           "tokenizer_config.json (or use a tokenizer that has one), or give "
                           "prompt/completion rows instead.")
    return tokenizer


def _tokens(tokenizer: HFTokenizer, messages: list[dict], generation: bool) -> list[int]:
    if not messages and not generation:
        return []
    try:
        text = tokenizer.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception as e:  # noqa: BLE001 - a template's own errors (jinja, raise_exception) are the data's
        raise DistillError(f"The chat template of '{tokenizer.name}' failed on a conversation "
                           f"({type(e).__name__}: {clip(str(e), 200)}). Check the messages' roles and "
                           "order against what the template accepts.") from None
    return tokenizer.encode(text)


def _check_prefix(shorter: list[int], longer: list[int], tokenizer: HFTokenizer, j: int) -> None:
    if longer[:len(shorter)] != shorter:
        pairs = enumerate(zip(shorter, longer, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), len(longer))
        raise DistillError(
            f"The chat template of '{tokenizer.name}' is not prefix-stable: the tokens of a "
            f"conversation's first {j} message(s) are not a prefix of the tokens with message {j + 1} "
            f"added (they differ at token {at}), so its assistant tokens cannot be located. Use a "
            "template that renders earlier turns the same whatever follows, or prompt/completion rows."
        )


def encode_chat(messages: list[dict], tokenizer, mask_prompt: bool = True) -> tuple[list[int], list[int]]:
    """(ids, target mask) of a conversation: 1 on assistant turns' tokens (see the module docstring)."""
    tokenizer = chat_tokenizer(tokenizer)
    prev, mask = [], []
    for j, message in enumerate(messages):
        full = _tokens(tokenizer, messages[:j + 1], generation=False)
        if message["role"] == "assistant":
            head = _tokens(tokenizer, messages[:j], generation=True)
            _check_prefix(prev, head, tokenizer, j)
            _check_prefix(head, full, tokenizer, j)
            mask += [0] * (len(head) - len(prev)) + [1] * (len(full) - len(head))
        else:
            _check_prefix(prev, full, tokenizer, j)
            mask += [0] * (len(full) - len(prev))
        prev = full
    return prev, mask if mask_prompt else [1] * len(prev)
