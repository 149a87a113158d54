"""Small widgets that help a learner choose. The graded answer always lives in code, never in widget state.

Re-executing a notebook (nbval, the grader) rebuilds widgets with their defaults, so a learner's clicks are gone.
A widget here therefore *shows the line to paste* into the exercise cell, and its plain-text form (what nbval
compares, what a terminal shows) is a fixed sentence: headless runs need no clicks.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

QUIZ_CLASS = "course-quiz"
# The chosen answer stands out: filled, white bold text (the default "pressed" look is a shade of grey).
SELECTED_CSS = f"""<style>
.{QUIZ_CLASS} .widget-toggle-button.mod-active {{
    background-color: #1f6fb2; color: white; font-weight: bold; box-shadow: none;
}}
.{QUIZ_CLASS} .widget-toggle-button:not(.mod-active) {{ color: #555; }}
.{QUIZ_CLASS} .widget-toggle-button i {{ margin: 0 0.35em; }}
</style>"""


class TextFallback:
    """Base of the course's widgets: built on first display, and shown as ``summary()`` wherever widgets do not
    render (nbval compares that text, a terminal shows it, a graded copy keeps it). Subclasses set
    ``self._widget = None`` and implement ``_build()`` and ``summary()``."""

    _widget: Any = None

    def summary(self) -> str:
        raise NotImplementedError

    def _build(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.summary()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        if self._widget is None:
            self._widget = self._build()
        bundle = dict(self._widget._repr_mimebundle_())
        bundle["text/plain"] = self.summary()  # the widget's own repr is long and changes with every click
        return bundle


class ClassificationQuiz(TextFallback):
    """One row of toggle buttons per item; below, the ``VARIABLE = {...}`` code for the choices made so far.

    ``items`` maps a short key to the text shown; ``choices`` are the possible answers (strings).
    ``answers`` pre-selects choices (e.g. the learner's current ``ANSWERS``), so re-running keeps them visible.
    """

    def __init__(
        self,
        items: Mapping[str, str],
        choices: Sequence[str],
        *,
        variable: str = "ANSWERS",
        answers: Mapping[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        if not items or not choices:
            raise ValueError("a quiz needs items and choices")
        self.items = dict(items)
        self.choices = list(choices)
        self.variable = variable
        self.title = title
        given = answers if isinstance(answers, Mapping) else {}
        self._answers: dict[str, str | None] = {
            k: given.get(k) if given.get(k) in self.choices else None for k in self.items
        }
        self._widget: Any = None
        self._buttons: dict[str, Any] = {}
        self._code: Any = None

    # ---- the answer as code ---------------------------------------------------------------------------
    @property
    def answers(self) -> dict[str, str | None]:
        return dict(self._answers)

    def choose(self, key: str, choice: str | None) -> None:
        """Set one answer (what a click does)."""
        if key not in self.items:
            raise KeyError(key)
        if choice is not None and choice not in self.choices:
            raise ValueError(f"{choice!r} is not one of {self.choices}")
        self._answers[key] = choice
        if (button := self._buttons.get(key)) is not None and button.value != choice:
            button.value = choice
        self._refresh()

    def code(self) -> str:
        """The assignment to paste into the exercise cell; unanswered items show ``...``."""
        width = max(len(json.dumps(k)) for k in self.items)
        lines = []
        for key, value in self._answers.items():
            shown = json.dumps(value, ensure_ascii=False) if value is not None else "...,  # choose"
            comma = "," if value is not None else ""
            lines.append(f"    {json.dumps(key) + ':':<{width + 1}} {shown}{comma}")
        return f"{self.variable} = {{\n" + "\n".join(lines) + "\n}"

    def answered(self) -> int:
        return sum(v is not None for v in self._answers.values())

    # ---- display --------------------------------------------------------------------------------------
    def summary(self) -> str:
        """The quiz as text: what a reader without widgets (a terminal, nbval, a graded copy) needs to answer."""
        choices = " / ".join(self.choices)
        width = max(len(k) for k in self.items)
        scenarios = "\n".join(f"  {key.ljust(width)}  {text}" for key, text in self.items.items())
        return (
            f"Quiz: {len(self.items)} scenarios, each {choices}. Click an answer per scenario; the "
            f"{self.variable} = {{...}} code to paste into the exercise cell appears under the buttons.\n{scenarios}"
        )

    def _build(self) -> Any:
        import ipywidgets as w

        rows = [w.HTML(SELECTED_CSS)]
        if self.title:
            rows.append(w.HTML(f"<b>{html.escape(self.title)}</b>"))
        for key, text in self.items.items():
            button = w.ToggleButtons(
                options=self.choices,
                value=self._answers[key],
                icons=self._icons(self._answers[key]),
                style={"button_width": "128px"},
                layout=w.Layout(flex="0 0 auto"),
            )
            button.observe(lambda change, key=key: self._clicked(key, change["new"]), names="value")
            self._buttons[key] = button
            label = w.HTML(
                f'<div style="line-height:1.35"><code>{html.escape(key)}</code> · {html.escape(text)}</div>',
                layout=w.Layout(flex="1 1 auto", margin="0 0 0 8px"),
            )
            rows.append(w.HBox([button, label], layout=w.Layout(align_items="center")))
        self._code = w.HTML()
        self._refresh()
        rows.append(self._code)
        box = w.VBox(rows)
        box.add_class(QUIZ_CLASS)
        return box

    def _icons(self, value: str | None) -> list[str]:
        """A check mark on the chosen button (visible even where the quiz's CSS is not applied)."""
        return ["check" if choice == value else "" for choice in self.choices]

    def _clicked(self, key: str, value: str | None) -> None:
        self._answers[key] = value
        if (button := self._buttons.get(key)) is not None:
            button.icons = self._icons(value)
        self._refresh()

    def _refresh(self) -> None:
        if self._code is None:
            return
        progress = f"{self.answered()} of {len(self.items)} answered — copy this into the exercise cell:"
        self._code.value = f"<div>{html.escape(progress)}</div><pre>{html.escape(self.code())}</pre>"
