"""Conversation templates: how a question's turns become the token ids a method decodes from."""

from __future__ import annotations

from ..errors import SpecbenchError
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("vicuna_v1.1", "chat")
AUTO = "auto"


def resolve_template(template: str, tokenizer, model_name: str) -> str:
    """'auto' → Vicuna v1.1 for Vicuna-family models (Spec-Bench's own setting) and for tokenizers
    without a chat template, else the tokenizer's chat template; a named template as is."""
    if template != AUTO:
        if template not in TEMPLATES:
            raise SpecbenchError(f"--template {template!r}: choose one of {AUTO}, {', '.join(TEMPLATES)}")
        return template
    if "vicuna" in model_name.lower() or not getattr(tokenizer, "chat_template", None):
        return "vicuna_v1.1"
    return "chat"


def vicuna_prompt(turns: list[str], answers: list[str], eos: str = "</s>") -> str:
    """Vicuna v1.1 text for the next assistant turn.

    `turns` are the user messages so far (the last one is being answered) and `answers` the
    assistant's earlier answers (one fewer than turns). Separators: " " after user messages,
    EOS text after assistant answers, as FastChat's vicuna_v1.1 template writes them.
    """
    if len(answers) != len(turns) - 1:
        raise SpecbenchError("need exactly one answer for every turn but the last")
    text = VICUNA_SYSTEM + " "
    for i, question in enumerate(turns):
        text += f"USER: {question} ASSISTANT:"
        if i < len(answers):
            text += f" {answers[i]}{eos}"
    return text


def build_prompt_ids(tokenizer, template: str, turns: list[str], answers: list[str]) -> list[int]:
    """Token ids of the prompt for the last turn, BOS included."""
    if template == "vicuna_v1.1":
        text = vicuna_prompt(turns, answers, eos=tokenizer.eos_token or "</s>")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + list(ids)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise SpecbenchError("--template chat: this tokenizer has no chat template; use vicuna_v1.1")
        messages = []
        for i, question in enumerate(turns):
            messages.append({"role": "user", "content": question})
            if i < len(answers):
                messages.append({"role": "assistant", "content": answers[i]})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    raise SpecbenchError(f"unknown template {template!r}; choose one of: {', '.join(TEMPLATES)}")
