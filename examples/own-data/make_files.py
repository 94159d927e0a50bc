"""Make a small long-tailed data set of one's own, in the formats domdistill reads.

Five Reuters topics (earn 60 documents, acq 30, trade 12, coffee 6, gold 3), with recorded
teacher answers: the BalDistill authors' GPT rationales for these documents. Writes, in the
current folder:

- ``pool.jsonl``: the training pool, fields ``id``, ``topic``, ``text``, ``label``;
- ``test.jsonl``: 5 held-out documents per topic, same fields;
- ``teacher.jsonl``: what the teacher answered, in domdistill's recorded-teacher shapes: one
  ``{text, rationale, prediction, label}`` line per pool document, and for the two smallest
  topics three ``{text, rationale, prediction, gt_choice, source}`` lines standing in for
  documents the teacher wrote when asked for new ones (here: documents left out of the pool).

Usage: ``python make_files.py PATH/TO/shared/data``
"""

import gzip
import json
import sys
from pathlib import Path

SIZES = {"earn": 60, "acq": 30, "trade": 12, "coffee": 6, "gold": 3}
TEST_PER_TOPIC = 5

shared = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
source = shared / "baldistill-teacher" / "r52" / "r52_chatgpt_cot_train_count_50.jsonl.gz"
with gzip.open(source, "rt", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]

pool, test, teacher = [], [], []
for topic, n in SIZES.items():
    docs = [r for r in records if r["label"] == topic]
    for i, r in enumerate(docs[:n + TEST_PER_TOPIC + 3]):
        row = {"id": f"{topic}-{i}", "topic": topic, "text": r["text"], "label": topic}
        if i < n:
            pool.append(row)
            teacher.append(r)  # the teacher's rationale for a pool document
        elif i < n + TEST_PER_TOPIC:
            test.append(row)
        elif n < 10:  # a small topic: examples the teacher "wrote" for it
            teacher.append({"text": r["text"], "rationale": r["rationale"],
                            "prediction": r["prediction"], "gt_choice": topic, "source": topic})

for name, rows in (("pool", pool), ("test", test), ("teacher", teacher)):
    with open(f"{name}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{name}.jsonl: {len(rows)} lines")
