r"""`task.kind: hf`: any Hugging Face `datasets` dataset -- a local folder (save_to_disk) or a hub id
(load_dataset) -- with split names, a field mapping and an answer-extraction pattern.

    task:
      kind: hf
      hf:
        dataset: openai/gsm8k          # or /data/my_set (a save_to_disk folder)
        config_name: main
        seed_split: train              # the pool strategies choose from
        test_split: test               # null: carve the test split out of seed_split
        question_field: question
        answer_field: answer
        answer_pattern: '####\s*(.+)'  # group 1 = the final answer; the text before it = solution

A row whose fields are missing/empty or whose answer does not match the pattern is reported as
`DATASET[split] row N: what is wrong` (N counts from 1); task.on_bad_row decides fail or skip.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from activesyn_ray.tasks.base import Example, Task, split_disjoint
from activesyn_ray.tasks.files import BadRow

log = logging.getLogger(__name__)


def load_hf_dataset(spec: str, config_name: str | None = None):
    """A `datasets` Dataset or DatasetDict from a save_to_disk folder or a hub id."""
    import datasets

    if Path(spec).expanduser().exists():
        try:
            return datasets.load_from_disk(str(Path(spec).expanduser()))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"task.hf.dataset: {spec} is not a `datasets` save_to_disk "
                                    f"folder ({err})") from None
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"task.hf.dataset: {spec} does not exist")
    try:
        return datasets.load_dataset(spec, config_name)
    except Exception as err:  # offline + not cached, unknown id, missing config name, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FileNotFoundError(f"task.hf.dataset: cannot load {spec!r}"
                                f"{f' ({config_name})' if config_name else ''}: {first}") from None


class HfTask(Task):
    name = "hf"

    def __init__(self, cfg, *, seed: int):
        super().__init__(cfg, seed=seed)
        self.hf = cfg.hf
        try:
            self.pattern = re.compile(self.hf.answer_pattern) if self.hf.answer_pattern else None
        except re.error as err:
            raise ValueError(f"task.hf.answer_pattern: not a valid regular expression ({err})") from None
        if self.pattern is not None and self.pattern.groups < 1:
            raise ValueError("task.hf.answer_pattern: needs a group around the answer, e.g. '####\\s*(.+)'")
        self.name = f"hf:{self.hf.dataset}"
        self.skipped: list[str] = []

    def _split(self, data, split: str):
        import datasets

        if isinstance(data, datasets.Dataset):
            if split != self.hf.seed_split:
                raise ValueError(f"task.hf: {self.hf.dataset} is a single split; set "
                                 f"test_split: null to carve the test split out of it")
            return data
        if split not in data:
            raise ValueError(f"task.hf: {self.hf.dataset} has no split {split!r}; it has "
                             f"{', '.join(data.keys())}")
        return data[split]

    def _parse(self, row: dict, split: str, n: int) -> Example:
        h = self.hf
        for key in (h.question_field, h.answer_field):
            if key not in row:
                raise BadRow(f"no field {key!r} (fields: {', '.join(row)}; set task.hf.*_field)")
            if row[key] is None or str(row[key]).strip() == "":
                raise BadRow(f"field {key!r} is empty")
        raw = str(row[h.answer_field])
        solution = None
        if self.pattern is None:
            answer = raw.strip()
        else:
            matches = list(self.pattern.finditer(raw))
            if not matches or not (matches[-1].group(1) or "").strip():
                raise BadRow(f"field {h.answer_field!r} does not match task.hf.answer_pattern "
                             f"'{h.answer_pattern}': {raw[:60]!r}")
            last = matches[-1]  # the final answer is the last match (GSM8K: the last `####`)
            answer = last.group(1).strip()
            solution = raw[:last.start()].strip() or None
        meta = {"split": split, "row": n}
        if h.stratum_field and row.get(h.stratum_field) is not None:
            meta["stratum"] = str(row[h.stratum_field])
        rid = row.get(h.id_field) if h.id_field else None
        return Example(id=str(rid if rid is not None else f"{split}-{n}"),
                       question=str(row[h.question_field]), answer=answer, solution=solution,
                       meta=meta)

    def _load(self, data, split: str) -> list[Example]:
        good = []
        for n, row in enumerate(self._split(data, split), 1):
            try:
                good.append(self._parse(row, split, n))
            except BadRow as err:
                msg = f"{self.hf.dataset}[{split}] row {n}: {err}"
                if self.cfg.on_bad_row == "fail":
                    raise BadRow(msg + "  (set task.on_bad_row: skip to drop such rows)") from None
                log.warning("skipped bad row %s", msg)
                self.skipped.append(msg)
        random.Random(self.seed).shuffle(good)
        return good

    def splits(self) -> tuple[list[Example], list[Example]]:
        data = load_hf_dataset(self.hf.dataset, self.hf.config_name)
        pool = self._load(data, self.hf.seed_split)
        if self.hf.test_split is None:
            n = self.cfg.test_size
            pool, test = pool[n:], pool[:n]
        else:
            test = self._load(data, self.hf.test_split)
        return split_disjoint(pool, test, self.cfg.seed_size, self.cfg.test_size,
                              f"task.hf.dataset {self.hf.dataset}")
