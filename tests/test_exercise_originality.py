"""No exercise repeats a lesson cell, another exercise, or a bug a lesson already shows (issue 22).

An exercise that a learner can solve by copying a cell of a lesson practises copying. The checks compare code
as token sequences, with comments and strings dropped and local names made anonymous (``x.view(B, L, H, d)``
and ``inp.reshape(b, n, h, e)`` read the same), so renaming the variables of a lesson's cell does not make an
exercise new:

* a **write** exercise's answer (between ``### BEGIN SOLUTION`` and ``### END SOLUTION``) may not be mostly
  covered by runs of five or more tokens of any one code cell of its lesson or an earlier one (what a learner
  has read when doing the set; later lessons may show the code again, referring back);
* a write exercise may not mostly repeat the answer of an earlier write exercise (a loop around it is not a new
  exercise);
* a **find-the-bug** exercise may not be a lesson cell that shows the same bug: one cell holding its broken
  statements (with the function's parameters and q, k, v named as they are, since there the names can be the
  bug: ``k @ q.T``) and most of the broken function as the learner gets it. A bug the lesson shows and
  explains is no longer something to find.

Each check is shown to fail on the copy it guards against (the ``..._is_caught`` tests).
"""

from __future__ import annotations

import builtins
import difflib
import io
import keyword
import re
import textwrap
import tokenize
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSON_CELL_LIMIT = 0.85  # share of an answer's tokens covered by one lesson cell
ANSWER_LIMIT = 0.7  # share of a later exercise's answer covered by an earlier exercise's answer
MIN_TOKENS = 30  # shorter answers (one formula, one mask expression) are the lesson's idea, not its cell
MIN_RUN = 5  # shortest run of tokens that counts as copied

_KEEP = set(keyword.kwlist) | set(dir(builtins)) | {"torch", "math", "F", "nn", "np", "triton", "tl"}
_SAME = {"view": "reshape", "permute": "transpose", "swapaxes": "transpose", "mT": "transpose"}
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
_REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)


def tokens(source: str, *, keep: frozenset[str] = frozenset()) -> list[str]:
    """The code's tokens without comments, strings or layout; local names become ``ID``, except those in ``keep``."""
    out: list[str] = []
    previous = ""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in _SKIP:
            continue
        if tok.type == tokenize.STRING:
            text = "STR"
        elif tok.type == tokenize.NAME and previous != "." and tok.string not in _KEEP | keep:
            text = "ID"
        elif tok.type == tokenize.NAME:
            text = _SAME.get(tok.string, tok.string)
        else:
            text = tok.string
        out.append(text)
        previous = tok.string
    return out


def coverage(answer: list[str], other: list[str], min_run: int = MIN_RUN) -> float:
    """Share of ``answer``'s tokens that lie in runs of at least ``min_run`` tokens also found, in order, in
    ``other``."""
    if not answer:
        return 0.0
    blocks = difflib.SequenceMatcher(None, answer, other, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks if b.size >= min_run) / len(answer)


def _code_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def lesson_cells() -> list[tuple[str, list[str], str]]:
    """(where, anonymous tokens, source) of every lesson code cell long enough to hold an answer."""
    found = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type != "code":
                continue
            source = cell.source
            if source.lstrip().startswith(("%", "!")):
                source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            try:
                toks = tokens(source)
            except (tokenize.TokenError, IndentationError, SyntaxError):
                continue
            if len(toks) >= MIN_RUN:
                found.append((f"{path.name} cell {i}", toks, source))
    return found


def _entry_of(cell: str) -> str:
    return re.search(r"^(?:def|class) (\w+)", cell, re.M).group(1)


def write_answers() -> list[tuple[str, str, list[str]]]:
    """(solution notebook, entry, anonymous tokens of the answer) of every write exercise, in course order."""
    found = []
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        for cell in _code_cells(path):
            match = _REGION.search(cell)
            if match:
                found.append((path.name, _entry_of(cell), tokens(textwrap.dedent(match.group(1)))))
    return found


def _arguments(cell: str) -> frozenset[str]:
    """The names of the parameters of the cell's function (of ``forward`` for a module): in a bug they matter
    (``k @ q.T`` is not ``q @ k.T``), while the bug's own local names do not."""
    match = re.search(
        r"def (?:forward|\w+)\(([^)]*)\)", cell[cell.find("def forward(") if "def forward(" in cell else 0 :]
    )
    return frozenset(re.findall(r"(?<![\w.])([A-Za-z_]\w*)\s*(?=[,:=)]|$)", match.group(1))) if match else frozenset()


def buggy_code() -> list[tuple[str, str, str, list[str], frozenset[str]]]:
    """(solution notebook, entry, the broken statements joined, tokens of the broken function as the learner gets
    it in exercises/, names kept) of every find-the-bug exercise."""
    found = []
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        given = {
            _entry_of(c): c for c in _code_cells(ROOT / "exercises" / path.name) if re.search(r"^(def|class) ", c, re.M)
        }
        for cell in _code_cells(path):
            lines = [line.split("### BUGGY:", 1)[1].strip() for line in cell.splitlines() if "### BUGGY:" in line]
            if lines:
                entry = _entry_of(cell)
                keep = _arguments(cell) | {"self", "q", "k", "v"}
                found.append((path.name, entry, "\n".join(lines), tokens(given[entry]), keep))
    return found


def closest_lesson_cell(answer: list[str], cells) -> tuple[float, str]:
    return max(((coverage(answer, toks), where) for where, toks, _ in cells), default=(0.0, ""))


def shows_bug(bug: str, cells, keep: frozenset[str] = frozenset()) -> str | None:
    """The lesson cell whose code holds the broken statements, with the names in ``keep`` as they are, or None."""
    wanted = " ".join(tokens(bug, keep=keep))
    for where, _, source in cells:
        try:
            have = " ".join(tokens(source, keep=keep))
        except (tokenize.TokenError, IndentationError, SyntaxError):
            continue
        if wanted in have:
            return where
    return None


@pytest.fixture(scope="module")
def cells():
    return lesson_cells()


ANSWERS = write_answers()
BUGS = buggy_code()


@pytest.mark.parametrize("answer", [a for a in ANSWERS if len(a[2]) >= MIN_TOKENS], ids=lambda a: a[1])
def test_no_write_exercise_repeats_a_lesson_cell(answer, cells):
    notebook, entry, toks = answer
    share, where = closest_lesson_cell(toks, [c for c in cells if c[0][:2] <= notebook[:2]])
    assert share < LESSON_CELL_LIMIT, f"{notebook}: {entry}'s answer is {share:.0%} the code of {where}"


def test_no_write_exercise_repeats_an_earlier_one():
    repeats = []
    for i, (notebook, entry, toks) in enumerate(ANSWERS):
        if len(toks) < MIN_TOKENS:
            continue
        for earlier_nb, earlier, earlier_toks in ANSWERS[:i]:
            share = coverage(toks, earlier_toks)
            if share >= ANSWER_LIMIT:
                repeats.append(f"{notebook}: {entry} is {share:.0%} the answer of {earlier} ({earlier_nb})")
    assert not repeats, repeats


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b[1])
def test_no_find_the_bug_exercise_has_a_bug_a_lesson_shows(bug, cells):
    notebook, entry, code, broken, keep = bug
    read = [c for c in cells if c[0][:2] <= notebook[:2]]
    where = shows_bug(code, read, keep)
    share = coverage(broken, next(toks for w, toks, _ in read if w == where)) if where else 0.0
    assert share < LESSON_CELL_LIMIT, f"{notebook}: {entry} is {where}, where the lesson shows the bug ({share:.0%})"


def test_the_sources_were_found():
    assert len(ANSWERS) >= 40 and len(BUGS) >= 10, (len(ANSWERS), len(BUGS))


# The checks fail on the copies they guard against.


def test_a_renamed_copy_of_a_lesson_cell_is_caught(cells):
    where, _, source = next(c for c in cells if "def split_heads(" in c[2] or "def merge_heads(" in c[2])
    renamed = re.sub(r"\bx\b", "inp", source).replace("num_heads", "h").replace(".view(", ".reshape(")
    share, found = closest_lesson_cell(tokens(renamed), cells)
    assert share >= LESSON_CELL_LIMIT and found == where


def test_a_loop_around_an_earlier_answer_is_caught():
    body = "\n".join(
        [
            "scale = 1.0 / math.sqrt(q.shape[-1])",
            "s = scale * q @ k.transpose(-2, -1)",
            "m = s.amax(dim=-1, keepdim=True)",
            "p = torch.exp(s - m)",
            "return p @ v / p.sum(dim=-1, keepdim=True)",
        ]
    )
    looped = "outs = []\nfor i in range(0, q.shape[-2], 16):\n" + textwrap.indent(
        body.replace("return ", "outs.append("), "    "
    )
    looped = looped.rstrip() + ")\nreturn torch.cat(outs, dim=-2)"
    assert coverage(tokens(looped), tokens(body)) < ANSWER_LIMIT <= coverage(tokens(body), tokens(looped))
    assert coverage(tokens(looped.replace("q.shape[-2], 16", "L, block")), tokens(body)) < 1.0


def test_a_bug_shown_in_a_lesson_is_caught(cells):
    where, _, source = next(c for c in cells if "transpose(" in c[2] and "@" in c[2])
    line = next(line.strip() for line in source.splitlines() if "transpose(" in line and "@" in line)
    assert shows_bug(line, cells, frozenset({"q", "k"})) is not None
    assert shows_bug(line.replace("@", "*") + " + 1", cells) is None
