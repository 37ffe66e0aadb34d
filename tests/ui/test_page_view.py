"""A source card's "Show on page" on the Chat page (in-process, Streamlit's AppTest): offered for
passages that know where they sit on their page (PDF pages, images), drawn only when opened, and
a page that cannot be drawn any more said so; formats without pages keep the text view alone.
The click on [n] that opens it in a browser is tested in test_page_view_e2e.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.ui.conftest import open_app
from tests.ui.test_chat import WARRANTY, ask, last_turn
from ui.chat import SHOW_ON_PAGE


def _shown(at) -> list:
    """What the "Show on page" expanders hold."""
    return [e for view in at.expander if view.label == SHOW_ON_PAGE for e in view.children.values()]


def _view_key(turn, n: int) -> str:
    return f"page-src-{turn.id}-{n}"


@pytest.mark.slow
def test_show_on_page_is_offered_for_pdf_passages_and_draws_the_page_when_opened(sample_data: Path) -> None:
    at = ask(open_app(), WARRANTY)
    turn = last_turn(at)
    placed = [s for s in turn.sources if s.boxes]
    assert placed and all(s.name.endswith(".pdf") and s.page_size for s in placed)
    assert all(not s.boxes for s in turn.sources if not s.name.endswith(".pdf")), "no pages, no boxes"
    assert [e.label for e in at.expander].count(SHOW_ON_PAGE) == len(placed)
    assert not any(_shown(at)), "no page is drawn before it is asked for"

    at.session_state[_view_key(turn, placed[0].n)] = True  # what opening it (or clicking [n]) does
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (image,) = (e for e in _shown(at) if type(e).__name__ == "Image")
    assert "the passage is marked" in str(image.proto)


@pytest.mark.slow
def test_a_page_that_cannot_be_drawn_any_more_says_why(sample_data: Path, tmp_path: Path) -> None:
    at = ask(open_app(), WARRANTY)
    turn = last_turn(at)
    src = next(s for s in turn.sources if s.boxes)
    gone = dataclasses.replace(src, source=str(tmp_path / "moved-away.pdf"))
    turn.evidence = dataclasses.replace(turn.evidence, passages=(gone,))
    at.session_state[_view_key(turn, gone.n)] = True
    at.run()
    assert any("moved-away.pdf is no longer at" in w.value for w in at.warning)
