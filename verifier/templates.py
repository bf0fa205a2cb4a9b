"""Prompt templates for the judges, stored as text files under ``verifier/prompts/``.

A template file has optional sections opened by a line ``[system]``, ``[user]`` or ``[assistant]``;
text before any header belongs to ``[user]``. The ``[assistant]`` section is a prefill: backends that
can continue a started reply (vLLM) generate after it, and the parser reads prefill + reply; others
drop it. Placeholders are ``{{name}}``; they are filled in one pass, so a response that itself
contains ``{{answer}}`` is never expanded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from veripo.errors import UserError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
_SECTION = re.compile(r"^\[(system|user|assistant)\]\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

Messages = list[dict[str, str]]


class TemplateError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template: `name` (file stem or path), `text` (the whole file, hashed into cache keys),
    `system`, `user`, `prefill` sections and the placeholder names it uses."""

    name: str
    text: str
    system: str | None
    user: str
    prefill: str | None
    placeholders: frozenset[str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @classmethod
    def from_text(cls, text: str, name: str = "<inline>") -> "PromptTemplate":
        sections: dict[str, str] = {}
        matches = list(_SECTION.finditer(text))
        head = text[:matches[0].start()] if matches else text
        if head.strip():
            sections["user"] = head
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            if m.group(1) in sections:
                raise TemplateError(f"template {name}: section [{m.group(1)}] appears twice")
            sections[m.group(1)] = text[m.end():end]
        user = sections.get("user", "").strip("\n")
        if not user.strip():
            raise TemplateError(f"template {name}: no [user] text")
        system = sections.get("system", "").strip("\n") or None
        prefill = sections.get("assistant", "").strip() or None
        names = frozenset(_PLACEHOLDER.findall(text))
        return cls(name, text, system, user, prefill, names)

    @classmethod
    def load(cls, name_or_path: str | Path) -> "PromptTemplate":
        """A bundled template by name (``consistency``) or any file path."""
        path = Path(name_or_path)
        if not path.suffix and not path.exists():
            path = PROMPTS_DIR / f"{name_or_path}.txt"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.txt")))
            raise TemplateError(f"no prompt template {str(name_or_path)!r}; bundled: {known}, or give a file path")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise TemplateError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}). Fix: save the template "
                                "as UTF-8") from None
        return cls.from_text(text, name=path.stem)

    def require(self, names: set[str]) -> None:
        """Fail unless every placeholder is one of `names` (a typo in a template file)."""
        unknown = self.placeholders - names
        if unknown:
            raise TemplateError(f"template {self.name}: unknown placeholder(s) "
                                f"{', '.join('{{' + u + '}}' for u in sorted(unknown))}; allowed: "
                                f"{', '.join(sorted(names))}")

    def fill(self, text: str, values: dict[str, str]) -> str:
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)

    def render(self, values: dict[str, str]) -> Messages:
        """Chat messages: system (if any), user, then the prefill as a final assistant message."""
        msgs: Messages = []
        if self.system:
            msgs.append({"role": "system", "content": self.fill(self.system, values)})
        msgs.append({"role": "user", "content": self.fill(self.user, values)})
        if self.prefill:
            msgs.append({"role": "assistant", "content": self.prefill})
        return msgs
