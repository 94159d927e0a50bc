"""Loaders on the real data beside the repository, on files we write, and on bad input."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from domdistill.config import DataConfig, FieldMap
from domdistill.data.example import DomainDataset
from domdistill.data.loaders import (
    detect_format, load_dataset, load_from_config, load_test_from_config, normalize_r52_text,
    r52_match_key,
)
from domdistill.data.recorded import domains_by_text, load_recorded
from domdistill.errors import InputError

BAD = Path(__file__).resolve().parent / "data" / "bad"
MATH_TRAIN = {"algebra": 1744, "intermediate_algebra": 1295, "prealgebra": 1205, "geometry": 870,
              "number_theory": 869, "counting_and_probability": 771, "precalculus": 746}


@pytest.fixture(scope="module")
def math_train(shared_data: Path) -> DomainDataset:
    return load_dataset(shared_data / "math" / "MATH.tar.gz", split="train")


# ---- real data -------------------------------------------------------------------------------

def test_r52_train_counts_and_mapping(shared_data: Path) -> None:
    path = shared_data / "reuters-r52" / "r52-train.txt"
    assert detect_format(path) == "r52"
    ds = load_dataset(path)
    counts = ds.counts()
    assert len(ds) == 6532 and len(counts) == 52
    assert counts["earn"] == 2840 and counts["platinum"] == 1 and counts["acq"] == 1596
    first = ds[0]
    assert first.id == "r52-train-1" and first.domain == first.answer == "cocoa"
    assert first.input.startswith("bahia cocoa review")
    assert len({ex.id for ex in ds}) == len(ds)


def test_r52_test_split(shared_data: Path) -> None:
    ds = load_dataset(shared_data / "reuters-r52" / "r52-test.txt", format="r52")
    assert len(ds) == 2568 and ds.counts()["earn"] == 1083


def test_math_tar_train_and_test(shared_data: Path, math_train: DomainDataset) -> None:
    assert math_train.counts() == dict(sorted(MATH_TRAIN.items(), key=lambda kv: -kv[1]))
    ex = math_train[0]
    assert ex.id == "train/algebra/0.json" and ex.domain == "algebra"
    assert ex.answer == "0" and ex.rationale and "\\boxed{0}" in ex.rationale
    assert ex.metadata == {"level": "Level 5", "type": "Algebra", "split": "train"}
    # every answer is the last boxed content, including the two brace-less "\boxed 9" ones
    by_id = {e.id: e for e in math_train}
    assert by_id["train/algebra/25040.json"].answer == "9"
    assert by_id["train/algebra/24014.json"].answer == "2"
    empty = sorted(e.id for e in math_train if not e.answer)  # upstream "\boxed{}"
    assert empty == ["train/number_theory/7115.json", "train/number_theory/7117.json"]
    test = load_dataset(shared_data / "math" / "MATH.tar.gz", split="test")
    assert len(test) == 5000 and test.counts()["counting_and_probability"] == 474
    assert {e.metadata["split"] for e in test} == {"test"}


def test_math_ids_match_math500(shared_data: Path) -> None:
    rows = [json.loads(l) for l in (shared_data / "math-500" / "test.jsonl").open()][:50]
    test = {e.id: e for e in load_dataset(shared_data / "math" / "MATH.tar.gz", split="test")}
    for row in rows:
        assert test[row["unique_id"]].input == row["problem"]


def test_math_folder_equals_tar(tmp_path: Path, shared_data: Path) -> None:
    # a small extracted tree: the first 5 files of each test subject, with the MATH/ prefix
    taken: dict[str, int] = {}
    with tarfile.open(shared_data / "math" / "MATH.tar.gz", "r|gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and parts[1] == "test" and taken.get(parts[2], 0) < 5:
                taken[parts[2]] = taken.get(parts[2], 0) + 1
                (tmp_path / m.name).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / m.name).write_bytes(tar.extractfile(m).read())
    assert detect_format(tmp_path) == "math"
    folder = load_dataset(tmp_path, split="test")
    assert len(folder) == 35 and set(folder.counts().values()) == {5}
    # the same files packed as a .tar.gz give the same examples
    archive = tmp_path.parent / "small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "MATH", arcname="MATH")
    packed = load_dataset(archive)
    assert [e.to_dict() for e in packed] == [e.to_dict() for e in folder]
    with pytest.raises(InputError, match="split"):
        load_dataset(archive, split="validation")


RECORDED = {
    "r52/r52_count_50.jsonl.gz": (2600, "pool"),
    "r52/r52_chatgpt_cot_train_count_50.jsonl.gz": (2600, "rationale"),
    "math/math_count_300.jsonl.gz": (2100, "pool_domain"),
    "math/math_chatgpt_cot_train_composed.jsonl.gz": (1244, "synthetic"),
    "math/corpus.jsonl.gz": (4125, "corpus"),
    "multichoice-qa/multichoice-qa_chatgpt_cot_train_composed.jsonl.gz": (4787, "synthetic"),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_teacher_shapes(shared_data: Path, name: str) -> None:
    path = shared_data / "baldistill-teacher" / name
    assert detect_format(path) == "recorded"
    n, shape = RECORDED[name]
    ds = load_dataset(path)
    assert len(ds) == n and {e.metadata["shape"] for e in ds} == {shape}
    raw = json.loads(gzip.open(path, "rt").readline())
    ex = ds[0]
    assert ex.input == raw["text"] and ex.id == f"{path.name.split('.')[0]}-1"
    assert ex.metadata["synthetic"] == (shape == "synthetic")
    if shape == "synthetic":
        assert ex.answer == raw["gt_choice"] and ex.metadata["prediction"] == raw["prediction"]
    if shape == "rationale":
        assert ex.rationale == raw["rationale"] and ex.domain == ex.answer == raw["label"]


def test_every_recorded_file_loads(shared_data: Path) -> None:
    files = sorted((shared_data / "baldistill-teacher").glob("*/*.jsonl.gz"))
    assert len(files) == 29
    for path in files:
        n_lines = sum(1 for line in gzip.open(path, "rt") if line.strip())
        ds = load_dataset(path)
        assert len(ds) == n_lines, path
        # only synthetic records may lack an answer: 6 MCQA ones where the teacher gave none
        missing = [e for e in ds if not e.answer]
        assert all(e.metadata["synthetic"] and e.metadata["prediction"] == "" for e in missing)
        assert len(missing) == (6 if path.name.startswith("multichoice-qa_chatgpt") else 0)


def test_recorded_math_domains_match_math_tree(shared_data: Path) -> None:
    corpus = load_recorded(shared_data / "baldistill-teacher" / "math" / "corpus.jsonl.gz")
    assert corpus.counts() == {"algebra": 1744, "intermediate_algebra": 763, "prealgebra": 561,
                               "geometry": 349, "number_theory": 290,
                               "counting_and_probability": 231, "precalculus": 187}
    assert corpus[0].rationale and "\\boxed{5}" in corpus[0].rationale
    cot = load_recorded(shared_data / "baldistill-teacher" / "math" /
                        "math_chatgpt_cot_train_count_300.jsonl.gz",
                        domain_of=domains_by_text(corpus))
    assert set(cot.domains) == set(MATH_TRAIN) and sum(cot.counts().values()) == 2100


def test_r52_normalisation_matches_recorded_texts(shared_data: Path) -> None:
    assert normalize_r52_text("STARTEL &lt;STAS> TO HAVE LOSS, SALES DROP. 2,524,000 dlrs.\n"
                              " Reuter") == "startel stas have loss sales drop dlrs"
    assert r52_match_key("one two three four five six", words=3) == "one two three"
    train = load_dataset(shared_data / "reuters-r52" / "r52-train.txt")
    keys = {r52_match_key(e.input) for e in train}
    assert normalize_r52_text(train[0].input + " reuter") == normalize_r52_text(train[0].input)
    recorded = load_dataset(shared_data / "baldistill-teacher" / "r52" /
                            "r52_chatgpt_cot_train_count_50.jsonl.gz")
    matched = sum(r52_match_key(e.input) in keys for e in recorded)
    assert matched / len(recorded) >= 0.90


# ---- formats we write ------------------------------------------------------------------------

def test_jsonl_and_csv_with_field_map(tmp_path: Path) -> None:
    rows = [{"qid": 7, "topic": "geo", "q": "Capital of France?", "a": "Paris", "why": "Known.",
             "extra": 1},
            {"topic": "math", "q": "2+2?", "a": 4, "why": None}]
    fields = FieldMap(id="qid", domain="topic", input="q", answer="a", rationale="why")
    jl = tmp_path / "qa.jsonl.gz"
    with gzip.open(jl, "wt") as f:
        f.write(json.dumps(rows[0]) + "\n\n" + json.dumps({**rows[1], "qid": None}) + "\n")
    with pytest.raises(InputError, match=r"qa.jsonl.gz:3, field 'qid'"):
        load_dataset(jl, fields=fields)
    ds = load_dataset(jl, fields={"domain": "topic", "input": "q", "answer": "a",
                                  "rationale": "why"})
    assert [e.id for e in ds] == ["qa-1", "qa-3"] and ds[1].answer == "4"
    assert ds[0].rationale == "Known." and ds[1].rationale is None
    assert ds[0].metadata == {"qid": 7, "extra": 1}
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('qid,topic,q,a,why\n7,geo,"Capital of\nFrance?",Paris,Known.\n'
                        '8,math,2+2?,4,\n', encoding="utf-8")
    ds = load_dataset(csv_path, fields=fields)
    assert detect_format(csv_path) == "csv"
    assert [e.id for e in ds] == ["7", "8"] and ds[0].input == "Capital of\nFrance?"
    assert ds[1].rationale is None and ds.counts() == {"geo": 1, "math": 1}
    with pytest.raises(InputError, match=r"qa.csv:4, field 'a'.*not in the label set"):
        load_dataset(csv_path, fields=fields, label_set=["Paris"])


def test_hf_saved_dataset_arrow_and_parquet(tmp_path: Path) -> None:
    import datasets

    data = {"uid": ["x1", "x2", "x3"], "subject": ["bio", "bio", "chem"],
            "question": ["What is a cell?", "What is DNA?", "What is H2O?"],
            "label": ["unit", "molecule", "water"]}
    fields = FieldMap(id="uid", domain="subject", input="question", answer="label")
    ds = datasets.Dataset.from_dict(data)
    ds.save_to_disk(str(tmp_path / "saved"))
    assert detect_format(tmp_path / "saved") == "hf"
    loaded = load_dataset(tmp_path / "saved", fields=fields)
    assert [e.id for e in loaded] == ["x1", "x2", "x3"] and loaded.counts() == {"bio": 2, "chem": 1}
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    assert [e.to_dict() for e in load_dataset(arrow, fields=fields)] == \
        [e.to_dict() for e in loaded]
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert [e.input for e in load_dataset(tmp_path / "d.parquet", fields=fields)] == \
        data["question"]
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([2])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert len(load_dataset(tmp_path / "dict", fields=fields, split="test")) == 1
    with pytest.raises(InputError, match="choose one with split"):
        load_dataset(tmp_path / "dict", fields=fields)
    with pytest.raises(InputError, match=r"saved:1, field 'nope': required field is missing"):
        load_dataset(tmp_path / "saved", fields=fields.model_copy(update={"domain": "nope"}))


def test_load_from_config_pool_and_test(shared_data: Path) -> None:
    cfg = DataConfig(path=str(shared_data / "math" / "MATH.tar.gz"), split="train",
                     zipf_alpha=1.1, seed=3, test_path=str(shared_data / "math" / "MATH.tar.gz"))
    pool = load_from_config(cfg)
    assert pool.counts()["algebra"] == 1744 and len(pool) < 7500
    test = load_test_from_config(cfg)
    assert test is not None and len(test) == 5000
    cfg_r52 = DataConfig(path=str(shared_data / "reuters-r52" / "r52-train.txt"), format="r52")
    assert len(load_from_config(cfg_r52)) == 6532 and load_test_from_config(cfg_r52) is None


def test_builtin_delegation() -> None:
    from domdistill.data.builtin import builtin_dataset

    pool = load_from_config(DataConfig(path="builtin", builtin_size=300, seed=4))
    direct = builtin_dataset(size=300, seed=4)
    assert [e.to_dict() for e in pool] == [e.to_dict() for e in direct] and len(pool) > 0
    assert [e.id for e in load_dataset("builtin", builtin_size=300, seed=4)] == \
        [e.id for e in direct]
    steep = load_from_config(DataConfig(path="builtin", builtin_size=300, seed=4, zipf_alpha=2.0))
    assert steep.counts() == builtin_dataset(size=300, alpha=2.0, seed=4).counts()


# ---- bad input -------------------------------------------------------------------------------

BAD_CASES = [
    ("malformed_json.jsonl", {}, r"malformed_json.jsonl:3: malformed JSON"),
    ("missing_domain.jsonl", {}, r"missing_domain.jsonl:2, field 'domain': required field is missing"),
    ("empty_domain.jsonl", {}, r"empty_domain.jsonl:2, field 'domain': field is empty"),
    ("wrong_type.jsonl", {}, r"wrong_type.jsonl:2, field 'input': expected a string, got list"),
    ("duplicate_ids.jsonl", {"fields": {"id": "id"}}, r"duplicate_ids.jsonl:3, field 'id': duplicate id 'e1' \(first seen at line 1\)"),
    ("empty.jsonl", {"format": "jsonl"}, r"empty.jsonl: no examples found"),
    ("blank_lines.jsonl", {}, r"blank_lines.jsonl: no examples found"),
    ("non_utf8.txt", {}, r"non_utf8.txt:2: not valid UTF-8 text .* at byte offset 80"),
    ("no_tab.txt", {"format": "r52"}, r"no_tab.txt:2: expected 'label<TAB>text'"),
    ("empty_label.txt", {}, r"empty_label.txt:2, field 'label': empty label"),
    ("labels.txt", {"label_set": ["earn", "acq"]},
     r"labels.txt:3, field 'label': label 'coffee' is not in the label set"),
    ("labels.txt", {"label_set": ["earn", "acq", "coffee", "tea"]},
     r"labels.txt, field 'label_set': label set entries with no examples: tea"),
    ("missing_column.csv", {}, r"missing_column.csv:1, field 'domain': column missing"),
    ("ragged_row.csv", {}, r"ragged_row.csv:3: expected 4 columns as in the header, got 3"),
    ("recorded_unknown_shape.jsonl", {"format": "recorded"},
     r"recorded_unknown_shape.jsonl:2: unknown record shape \{label, note, text\}"),
    ("recorded_empty_label.jsonl", {}, r"recorded_empty_label.jsonl:2, field 'label': field is empty"),
    ("truncated_line.jsonl.gz", {}, r"truncated_line.jsonl.gz:2: malformed JSON"),
    ("truncated_gzip.jsonl.gz", {"format": "jsonl"}, r"truncated_gzip.jsonl.gz: cannot read file"),
    ("does_not_exist.jsonl", {}, r"does_not_exist.jsonl: file or folder does not exist"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD_CASES, ids=[f"{c[0]}-{i}" for i, c in
                                                                enumerate(BAD_CASES)])
def test_bad_input_is_a_located_input_error(tmp_path: Path, name: str, kwargs: dict,
                                            message: str) -> None:
    before = sorted(BAD.iterdir())
    with pytest.raises(InputError, match=message) as info:
        load_dataset(BAD / name, **kwargs)
    assert str(BAD / name) in str(info.value)
    assert sorted(BAD.iterdir()) == before  # nothing written beside the input


def test_bad_math_member_and_unknown_format(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in [("MATH/train/algebra/1.json", {"problem": "1+1?", "solution": "$2$",
                                                           "level": "Level 1", "type": "Algebra"})]:
            raw = json.dumps(body).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(InputError, match=r"broken.tar.gz!MATH/train/algebra/1.json, field "
                                         r"'solution': solution has no \\boxed"):
        load_dataset(archive)
    with pytest.raises(InputError, match="unknown format 'xml'"):
        load_dataset(BAD / "labels.txt", format="xml")
    plain = tmp_path / "notes.txt"
    plain.write_text("no tabs here\n")
    with pytest.raises(InputError, match="cannot tell the format"):
        load_dataset(plain)
