import dataclasses
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from experiments.retclip.odir import (
    ANNOTATION_NAME,
    CLASS_NAMES,
    CLASSES,
    COLUMNS,
    IMAGES_DIR_NAME,
    KAGGLE_CSV_NAME,
    KAGGLE_IMAGES_DIR_NAME,
    QUALITY_KEYWORDS,
    Patient,
    find_odir,
    is_quality_keyword,
    keyword_class,
    label_disagreements,
    read_odir,
    split_keywords,
    split_patients,
    unlabelled_eyes,
)
from experiments.retclip.synthetic import CLASS_KEYWORDS, write_synthetic_odir
from medrepro.errors import DataError


def _row(patient_id: int, left: str, right: str, labels: str) -> dict[str, object]:
    return {
        "ID": patient_id,
        "Patient Age": 40 + patient_id,
        "Patient Sex": "Female" if patient_id % 2 else "Male",
        "Left-Fundus": f"{patient_id}_left.jpg",
        "Right-Fundus": f"{patient_id}_right.jpg",
        "Left-Diagnostic Keywords": left,
        "Right-Diagnostic Keywords": right,
        **{label: int(label in labels) for label in CLASSES},
    }


# Keyword cells in the styles of the real sheet: full-width commas, an ASCII comma with odd case and
# spacing, quality keywords beside diseases, and an eye described by a quality keyword only.
ROWS = [
    _row(7, "Glaucoma, Drusen", "hypertensive retinopathy，optic disk photographically invisible", "GHO"),
    _row(0, "cataract", "normal fundus", "C"),
    _row(2, "moderate non proliferative retinopathy，laser spot", "lens dust，mild nonproliferative retinopathy", "DO"),
    _row(4, "low image quality", "pathological myopia", "M"),
    _row(9, "normal fundus", "normal fundus", "D"),  # the sheet disagrees with the keywords
]


def _write_images(images: Path, rows: list[dict[str, object]]) -> None:
    images.mkdir(parents=True, exist_ok=True)
    for row in rows:
        for column in ("Left-Fundus", "Right-Fundus"):
            Image.new("RGB", (12, 8), (200, 80, 40)).save(images / str(row[column]))


def _write_original(root: Path, rows: list[dict[str, object]] = ROWS) -> Path:
    odir = root / "ODIR-5K"
    _write_images(odir / IMAGES_DIR_NAME, rows)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_excel(odir / ANNOTATION_NAME, index=False)
    return odir


def _write_kaggle(root: Path, rows: list[dict[str, object]] = ROWS) -> Path:
    """The Kaggle full_df.csv: one row per image, repeating the patient's fields."""
    images = root / KAGGLE_IMAGES_DIR_NAME
    _write_images(images, rows)
    per_image = []
    for row in rows:
        target = [int(row[label]) for label in CLASSES]
        for column in ("Right-Fundus", "Left-Fundus"):
            filename = str(row[column])
            per_image.append(
                {
                    **row,
                    "filepath": f"../input/ocular-disease-recognition-odir5k/ODIR-5K/Training Images/{filename}",
                    "labels": "['N']",
                    "target": str(target),
                    "filename": filename,
                }
            )
    pd.DataFrame(per_image).to_csv(root / KAGGLE_CSV_NAME, index=False)
    return root


def test_class_tables_cover_the_eight_labels() -> None:
    assert CLASSES == ("N", "D", "G", "C", "A", "H", "M", "O")
    assert set(CLASS_NAMES) == set(CLASSES)


def test_split_keywords_on_full_width_and_ascii_commas() -> None:
    cell = "Lens Dust，  moderate non proliferative  retinopathy,laser spot，"
    assert split_keywords(cell) == ("lens dust", "moderate non proliferative retinopathy", "laser spot")
    assert split_keywords("") == ()


@pytest.mark.parametrize("keyword", [*QUALITY_KEYWORDS, "Optic disc photographically invisible", "LOW IMAGE QUALITY"])
def test_quality_keywords_are_recognised(keyword: str) -> None:
    assert is_quality_keyword(keyword)


@pytest.mark.parametrize(
    ("keyword", "label"),
    [
        ("normal fundus", "N"),
        ("mild nonproliferative retinopathy", "D"),
        ("moderate non proliferative retinopathy", "D"),
        ("severe proliferative diabetic retinopathy", "D"),
        ("diabetic retinopathy", "D"),
        ("suspected glaucoma", "G"),
        ("cataract", "C"),
        ("wet age-related macular degeneration", "A"),
        ("hypertensive retinopathy", "H"),
        ("pathological myopia", "M"),
        ("myopia retinopathy", "M"),
        ("myopic maculopathy", "M"),
        ("drusen", "O"),
        ("branch retinal vein occlusion", "O"),
    ],
)
def test_keyword_class(keyword: str, label: str) -> None:
    assert keyword_class(keyword) == label


def test_keyword_class_refuses_quality_keywords() -> None:
    with pytest.raises(ValueError, match="lens dust"):
        keyword_class("lens dust")


def test_read_original_layout(tmp_path: Path) -> None:
    odir = _write_original(tmp_path)
    patients = read_odir(tmp_path)
    assert [patient.id for patient in patients] == [0, 2, 4, 7, 9]
    by_id = {patient.id: patient for patient in patients}
    assert by_id[0] == Patient(
        id=0,
        age=40,
        sex="Male",
        left_image=odir / IMAGES_DIR_NAME / "0_left.jpg",
        right_image=odir / IMAGES_DIR_NAME / "0_right.jpg",
        left_keywords=("cataract",),
        right_keywords=("normal fundus",),
        left_labels=("C",),
        right_labels=("N",),
        patient_labels=("C",),
    )
    assert by_id[7].left_keywords == ("glaucoma", "drusen")
    assert by_id[7].left_labels == ("G", "O")
    assert by_id[7].right_keywords == ("hypertensive retinopathy",)
    assert by_id[7].patient_labels == ("G", "H", "O")
    assert by_id[2].left_labels == ("D", "O")
    assert by_id[2].right_keywords == ("mild nonproliferative retinopathy",)


def test_eye_with_only_quality_keywords_is_kept_without_labels(tmp_path: Path) -> None:
    _write_original(tmp_path)
    patient = {patient.id: patient for patient in read_odir(tmp_path)}[4]
    assert (patient.left_keywords, patient.left_labels) == ((), ())
    assert patient.right_labels == ("M",)
    assert unlabelled_eyes(read_odir(tmp_path)) == [(4, "left")]


def test_label_disagreements_are_reported(tmp_path: Path) -> None:
    _write_original(tmp_path)
    assert label_disagreements(read_odir(tmp_path)) == [9]


def test_missing_column_names_column_and_file(tmp_path: Path) -> None:
    odir = _write_original(tmp_path)
    table = pd.read_excel(odir / ANNOTATION_NAME).drop(columns=["Right-Diagnostic Keywords"])
    table.to_excel(odir / ANNOTATION_NAME, index=False)
    with pytest.raises(DataError, match="Right-Diagnostic Keywords") as error:
        read_odir(tmp_path)
    assert str(odir / ANNOTATION_NAME) in str(error.value)


def test_missing_images_name_the_first_file_and_count(tmp_path: Path) -> None:
    odir = _write_original(tmp_path)
    (odir / IMAGES_DIR_NAME / "2_right.jpg").unlink()
    (odir / IMAGES_DIR_NAME / "9_left.jpg").unlink()
    with pytest.raises(DataError, match=r"2_right\.jpg") as error:
        read_odir(tmp_path)
    message = str(error.value)
    assert "patient ID 2" in message and "2 of 10" in message and "\n" not in message


@pytest.mark.parametrize("value", [2, "yes"])
def test_malformed_label_cell_names_the_row(tmp_path: Path, value: object) -> None:
    rows = [dict(row) for row in ROWS]
    rows[2]["O"] = value
    _write_original(tmp_path, rows)
    with pytest.raises(DataError, match=r"'O'.*row 4 .*patient ID 2"):
        read_odir(tmp_path)


def test_duplicated_patient_id_is_an_error(tmp_path: Path) -> None:
    _write_original(tmp_path, [*ROWS, ROWS[1]])
    with pytest.raises(DataError, match="patient ID 0 appears more than once"):
        read_odir(tmp_path)


def test_kaggle_variant_gives_the_same_patients(tmp_path: Path) -> None:
    _write_original(tmp_path / "original")
    _write_kaggle(tmp_path / "kaggle")
    original = read_odir(tmp_path / "original")
    kaggle = read_odir(tmp_path / "kaggle")
    images = tmp_path / "kaggle" / KAGGLE_IMAGES_DIR_NAME
    assert kaggle == [
        dataclasses.replace(
            patient, left_image=images / patient.left_image.name, right_image=images / patient.right_image.name
        )
        for patient in original
    ]


def test_kaggle_patient_with_one_image_row_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write_kaggle(tmp_path)
    table = pd.read_csv(root / KAGGLE_CSV_NAME)
    table[table["filename"] != "4_left.jpg"].to_csv(root / KAGGLE_CSV_NAME, index=False)
    with caplog.at_level(logging.WARNING):
        patients = read_odir(root)
    assert [patient.id for patient in patients] == [0, 2, 7, 9]
    assert "1 of 5 patients" in caplog.text


def test_kaggle_rows_that_disagree_are_an_error(tmp_path: Path) -> None:
    root = _write_kaggle(tmp_path)
    table = pd.read_csv(root / KAGGLE_CSV_NAME)
    table.loc[table["filename"] == "0_left.jpg", "Patient Age"] = 99
    table.to_csv(root / KAGGLE_CSV_NAME, index=False)
    with pytest.raises(DataError, match="patient ID 0 has rows that disagree"):
        read_odir(root)


def test_find_odir_layouts(tmp_path: Path) -> None:
    odir = _write_original(tmp_path / "release")
    assert find_odir(tmp_path / "release") == (odir / ANNOTATION_NAME, odir / IMAGES_DIR_NAME)
    assert find_odir(odir) == (odir / ANNOTATION_NAME, odir / IMAGES_DIR_NAME)
    kaggle = _write_kaggle(tmp_path / "kaggle")
    assert find_odir(kaggle) == (kaggle / KAGGLE_CSV_NAME, kaggle / KAGGLE_IMAGES_DIR_NAME)


def test_find_odir_names_root_and_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        find_odir(tmp_path)
    message = str(error.value)
    for expected in (str(tmp_path), ANNOTATION_NAME, IMAGES_DIR_NAME, KAGGLE_CSV_NAME, KAGGLE_IMAGES_DIR_NAME):
        assert expected in message


def _patients_with_labels(labels: list[tuple[str, ...]]) -> list[Patient]:
    return [
        Patient(i * 3, 50, "Male", Path(f"{i}_left.jpg"), Path(f"{i}_right.jpg"), (), (), (), (), patient_labels)
        for i, patient_labels in enumerate(labels)
    ]


def test_split_is_deterministic_disjoint_and_complete() -> None:
    patients = _patients_with_labels([("N",)] * 120 + [("D",)] * 60 + [("D", "H")] * 3 + [("O", "M")] * 17)
    splits = split_patients(patients, seed=3)
    again = split_patients(list(reversed(patients)), seed=3)
    assert {name: [p.id for p in members] for name, members in splits.items()} == {
        name: [p.id for p in members] for name, members in again.items()
    }
    assert split_patients(patients, seed=4) != splits
    ids = [patient.id for members in splits.values() for patient in members]
    assert sorted(ids) == sorted(patient.id for patient in patients)
    # Rounding happens per stratum (four here), so sizes may be off by a few patients.
    for name, expected in zip(("train", "valid", "test"), (160, 20, 20), strict=True):
        assert abs(len(splits[name]) - expected) <= 4
    # Three H patients in all: one reaches each split.
    for members in splits.values():
        assert Counter(label for patient in members for label in patient.patient_labels)["H"] == 1


def test_split_fractions_must_sum_to_one() -> None:
    with pytest.raises(ValueError, match="sum"):
        split_patients(_patients_with_labels([("N",)] * 10), fractions=(0.8, 0.1, 0.2))


def test_synthetic_keywords_map_to_their_class() -> None:
    for label, keywords in CLASS_KEYWORDS.items():
        for keyword in keywords:
            assert not is_quality_keyword(keyword)
            assert keyword_class(keyword) == label


def test_synthetic_round_trip(tmp_path: Path) -> None:
    odir = write_synthetic_odir(tmp_path / "a", n_patients=40, seed=5)
    assert odir == tmp_path / "a" / "ODIR-5K"
    assert tuple(pd.read_excel(odir / ANNOTATION_NAME).columns) == COLUMNS
    patients = read_odir(tmp_path / "a")
    assert len(patients) == 40
    ids = [patient.id for patient in patients]
    assert np.diff(ids).max() > 1  # not consecutive
    assert label_disagreements(patients) == []
    sizes = [Image.open(patient.left_image).size for patient in patients[:10]]
    assert len(set(sizes)) > 1 and all(width != height for width, height in sizes)
    assert all(96 <= side <= 192 for size in sizes for side in size)

    again = write_synthetic_odir(tmp_path / "b", n_patients=40, seed=5)
    other = write_synthetic_odir(tmp_path / "c", n_patients=40, seed=6)
    files = sorted(path.relative_to(odir) for path in odir.rglob("*") if path.is_file())
    assert len(files) == 81
    assert all((odir / name).read_bytes() == (again / name).read_bytes() for name in files)
    assert (odir / ANNOTATION_NAME).read_bytes() != (other / ANNOTATION_NAME).read_bytes()


def test_synthetic_sheet_uses_full_width_commas(tmp_path: Path) -> None:
    odir = write_synthetic_odir(tmp_path, n_patients=60, seed=0, min_size=32, max_size=40)
    table = pd.read_excel(odir / ANNOTATION_NAME)
    cells = pd.concat([table["Left-Diagnostic Keywords"], table["Right-Diagnostic Keywords"]])
    several = cells[cells.str.contains("，")]
    assert len(several) > 0 and not cells.str.contains(",").any()


def test_synthetic_classes_are_learnable_at_32_pixels(tmp_path: Path) -> None:
    write_synthetic_odir(tmp_path, n_patients=300, seed=1)
    patients = read_odir(tmp_path)
    pixels, labels, held_out = [], [], []
    for index, patient in enumerate(patients):
        for image, eye_labels in (
            (patient.left_image, patient.left_labels),
            (patient.right_image, patient.right_labels),
        ):
            if len(eye_labels) == 1:
                small = Image.open(image).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
                pixels.append(np.asarray(small, dtype=np.float32).ravel() / 255.0)
                labels.append(eye_labels[0])
                held_out.append(index % 4 == 0)  # by patient, so both eyes fall on the same side
    x, y, test = np.stack(pixels), np.array(labels), np.array(held_out)
    # One BLAS thread: on a small, shared machine thread contention makes this fit 50x slower.
    with threadpool_limits(limits=1):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x[~test], y[~test])
    accuracy = model.score(x[test], y[test])
    majority = Counter(y[test]).most_common(1)[0][1] / test.sum()
    assert accuracy >= 0.7 and accuracy > majority + 0.2


def test_empty_keyword_cell_warns_with_the_patient_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [*ROWS, _row(11, "", "cataract", "C"), _row(12, "normal fundus", float("nan"), "N")]
    _write_original(tmp_path, rows)
    with caplog.at_level(logging.WARNING):
        patients = {patient.id: patient for patient in read_odir(tmp_path)}
    assert "2 eyes have an empty diagnostic keyword cell" in caplog.text
    assert "11 left" in caplog.text and "12 right" in caplog.text and "4 left" not in caplog.text
    assert patients[11].left_labels == () and patients[12].right_labels == ()
