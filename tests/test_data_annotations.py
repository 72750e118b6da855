"""Annotation formats parse the synthetic dataset's real files and round-trip to the right labels."""

import csv
import json

import pytest

from videoconvmae.data.config import DataConfig
from videoconvmae.data.records import AnnotationError, load_records, save_class_names
from videoconvmae.data.synth import MOTIONS


def _k400_cfg(root, **kw):
    base = dict(dataset="k400", root=str(root / "k400"), train_annotation=str(root / "k400/train.csv"),
                val_annotation=str(root / "k400/val.csv"))
    return DataConfig(**{**base, **kw})


def _ssv2_cfg(root, **kw):
    base = dict(dataset="ssv2", root=str(root / "ssv2/videos"), train_annotation=str(root / "ssv2/train.json"),
                val_annotation=str(root / "ssv2/validation.json"))
    return DataConfig(**{**base, **kw})


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_k400_csv_labels_are_sorted_names(synth_root):
    names_in_csv = [row["label"] for row in _rows(synth_root / "k400/train.csv")]
    for split in ("train", "val"):
        records, names = load_records(_k400_cfg(synth_root), split)
        assert names == sorted(m[0] for m in MOTIONS[:5])
        rows = _rows(synth_root / f"k400/{split}.csv")
        assert len(records) == len(rows) == (15 if split == "train" else 10)
        for record, row in zip(records, rows):
            assert names[record.label] == row["label"]
            assert record.video_id == f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}"
            assert record.path == str(synth_root / "k400" / split / f"{record.video_id}.mp4")
    assert set(names_in_csv) == set(names)


def test_k400_list_matches_csv(synth_root, tmp_path):
    csv_records, names = load_records(_k400_cfg(synth_root), "train")
    cfg = _k400_cfg(synth_root, train_annotation=str(synth_root / "k400/train.txt"))
    list_records, list_names = load_records(cfg, "train")
    assert list_names == [str(i) for i in range(5)]
    assert [(r.path, r.label) for r in list_records] == [(r.path, r.label) for r in csv_records]
    # a fixed label file gives names to the list form and pins the K400 ids
    save_class_names(names, tmp_path / "classes.json")
    saved = json.loads((tmp_path / "classes.json").read_text())
    assert saved["class_names"] == names and saved["class_to_idx"][names[3]] == 3
    (tmp_path / "names.json").write_text(json.dumps(names))
    _, named = load_records(_k400_cfg(synth_root, train_annotation=cfg.train_annotation,
                                      labels_file=str(tmp_path / "names.json")), "train")
    assert named == names


def test_ssv2_json_maps_template_without_brackets(synth_root):
    labels = json.loads((synth_root / "ssv2/labels.json").read_text())
    for split, file in (("train", "train.json"), ("val", "validation.json")):
        records, names = load_records(_ssv2_cfg(synth_root), split)
        entries = json.loads((synth_root / "ssv2" / file).read_text())
        assert names == sorted(labels, key=lambda n: int(labels[n]))
        for record, entry in zip(records, entries):
            assert record.video_id == entry["id"]
            assert record.path == str(synth_root / "ssv2/videos" / f"{entry['id']}.webm")
            assert names[record.label] == entry["template"].replace("[something]", "something")
            assert record.label == int(labels[entry["template"].replace("[", "").replace("]", "")])
        list_cfg = _ssv2_cfg(synth_root, train_annotation=str(synth_root / "ssv2" / f"{split}.txt"),
                             labels_file=str(synth_root / "ssv2/labels.json"))
        list_records, list_names = load_records(list_cfg, "train")
        assert list_names == names
        assert [(r.path, r.label) for r in list_records] == [(r.path, r.label) for r in records]


def test_ssv2_official_style_entry(tmp_path):
    """The official template form with two placeholders, ids as strings in labels.json."""
    (tmp_path / "labels.json").write_text(json.dumps({"Putting something on something": "1",
                                                      "Approaching something with your camera": "0"}))
    (tmp_path / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "putting potato on a plate", "template": "Putting [something] on [something]",
         "placeholders": ["potato", "a plate"]}]))
    records, names = load_records(DataConfig(dataset="ssv2", root="/videos",
                                             train_annotation=str(tmp_path / "train.json")), "train")
    assert records[0].label == 1 and names[1] == "Putting something on something"
    assert records[0].path == "/videos/78687.webm"


def test_imagefolder(synth_root):
    cfg = DataConfig(dataset="imagefolder", train_annotation=str(synth_root / "imagenet/train"),
                     val_annotation=str(synth_root / "imagenet/val"))
    records, names = load_records(cfg, "train")
    assert names == [f"n{i:08d}" for i in range(5)]
    assert len(records) == 20
    for r in records:
        assert r.path.endswith(".JPEG") and f"/{names[r.label]}/" in r.path


@pytest.mark.parametrize("content,match", [
    ("label,youtube_id,time_start,time_end,split\nabseiling,abc,x,10,train\n", r"train.csv:2: time_start"),
    ("a.mp4 3\nb.mp4 cat\n", r"train.csv:2: expected '<path> <label id>'"),
    ("", r"train.csv: no items"),
])
def test_bad_annotations_name_the_file_and_line(tmp_path, content, match):
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(AnnotationError, match=match):
        load_records(DataConfig(train_annotation=str(tmp_path / "train.csv")), "train")


def test_missing_annotation_and_unknown_template(tmp_path):
    with pytest.raises(AnnotationError, match="data.val_annotation is empty"):
        load_records(DataConfig(), "val")
    (tmp_path / "labels.json").write_text(json.dumps({"Moving something up": "0"}))
    (tmp_path / "train.json").write_text(json.dumps([{"id": "1", "template": "Moving [something] down"}]))
    with pytest.raises(AnnotationError, match="'Moving something down' not in"):
        load_records(DataConfig(dataset="ssv2", train_annotation=str(tmp_path / "train.json")), "train")


def test_a_bom_is_dropped_from_csv_rows_and_list_files(synth_root, tmp_path):
    bom = "\ufeff"
    for name in ("train.csv", "train.txt"):
        (tmp_path / name).write_text(bom + (synth_root / "k400" / name).read_text(), encoding="utf-8")
        plain, _ = load_records(_k400_cfg(synth_root, train_annotation=str(synth_root / "k400" / name)), "train")
        with_bom, _ = load_records(_k400_cfg(synth_root, train_annotation=str(tmp_path / name)), "train")
        assert with_bom == plain, name  # the first path is not "\ufeffk400/..." (was: missing)


def test_a_label_id_typo_in_a_list_is_refused_not_a_1000_class_head(synth_root, tmp_path):
    lines = (synth_root / "k400/train.txt").read_text().splitlines()
    path, _ = lines[3].rsplit(None, 1)
    lines[3] = f"{path} 999"
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=rf"label ids are not 0..K-1 .*the largest is 999, of '{path}'"):
        load_records(_k400_cfg(synth_root, train_annotation=str(tmp_path / "train.txt")), "train")
    (tmp_path / "val.txt").write_text(f"{path} 7\n")  # a val id the train list does not have
    cfg = _k400_cfg(synth_root, train_annotation=str(synth_root / "k400/train.txt"),
                    val_annotation=str(tmp_path / "val.txt"))
    with pytest.raises(AnnotationError, match=r"val.txt: label 7 of .* is not a class of the train list \(ids 0..4\)"):
        load_records(cfg, "val")
