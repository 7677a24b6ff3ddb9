"""exmed_bert ClinVec: the join on the release's layout, ancestor fallback, coverage, resize methods.

The release's layout, from mims-harvard/ClinVec tutorial/010_download_clingraph_clinvec.ipynb (commit
c3f41f1): ClinVec_<vocab>.csv is "a pandas dataframe where the 128 columns correspond to the dimensions
of the embedding and the row index matches the `node_index`", read with `pd.read_csv(...)`,
`df.values` and `df['node_index'] = df.index`; ClinGraph_nodes.csv is tab-separated node_id, node_name,
ntype, node_index (e.g. `LP14832-7:lnc  Orthopoxvirus  LNC  62748` in tutorial/050).
"""

import numpy as np
import pytest

from experiments.exmed_bert import clinvec
from medrepro.errors import ConfigError, DataError


def _write_release(directory, rows: dict[str, list[tuple[str, float]]]) -> None:
    """ClinVec_<vocab>.csv as released: a header of the 128 column names, each row its node_index (the
    pandas row index, global across vocabularies, not the row number) and 128 values; ClinGraph_nodes.csv
    tab-separated."""
    nodes, index = ["node_id\tnode_name\tntype\tnode_index"], 100
    for vocab, entries in rows.items():
        lines = [",".join(str(i) for i in range(clinvec.DIM))]
        for code, value in entries:
            nodes.append(f"{code}:{vocab}\t{code} name, with a comma\t{vocab.upper()}\t{index}")
            lines.append(",".join([str(index), *([str(value)] * clinvec.DIM)]))
            index += 7
        (directory / f"ClinVec_{vocab}.csv").write_text("\n".join(lines) + "\n")
    (directory / "ClinGraph_nodes.csv").write_text("\n".join(nodes) + "\n")


def test_join_on_node_ids_and_ancestor_fallback(tmp_path):
    _write_release(tmp_path, {"icd10cm": [("E11.65", 1.0), ("E11", 2.0), ("I10", 3.0)],
                              "atc": [("N02B", 4.0)], "cpt": [("99214", 5.0)], "phecode": [("250.2", 9.0)]})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "E11.65:icd10cm", "E11.9:icd10cm", "I10:icd10cm",
              "N02BE01:atc", "99213:cpt", "G47.33:icd10cm"]
    found = clinvec.lookup(tokens, tmp_path, ["icd10cm", "atc", "cpt"], hierarchical=True)
    assert found.vectors[5, 0] == 1.0 and found.source[5] == clinvec.FOUND
    assert found.vectors[6, 0] == 2.0 and found.source[6] == clinvec.ANCESTOR and found.level[6] == 1  # E11.9 → E11
    assert found.vectors[8, 0] == 4.0 and found.level[8] == 2  # N02BE01 → N02BE → N02B
    assert found.source[9] == clinvec.FRESH and found.source[10] == clinvec.FRESH and found.source[:5].sum() == 0
    report = clinvec.coverage(tokens, found)
    assert report["icd10cm"] == {"tokens": 4, "found": 2, "ancestor": {"level_1": 1}, "fresh": 1}
    assert report["atc"]["ancestor"] == {"level_2": 1} and report["cpt"]["fresh"] == 1

    flat = clinvec.lookup(tokens, tmp_path, ["icd10cm", "atc"], hierarchical=False)
    assert flat.source[6] == clinvec.FRESH and flat.source[8] == clinvec.FRESH


def _rewrite(path, header: list[str], row) -> None:
    """One vector file of another layout: `row(node_index, values)` gives a row's fields."""
    lines = path.read_text().splitlines()[1:]
    rows = [row(int(line.split(",")[0]), line.split(",")[1:]) for line in lines]
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")


DIMS = [str(i) for i in range(clinvec.DIM)]


@pytest.mark.parametrize("layout", ["pandas_index_column", "named_node_index_last"])
def test_the_other_layouts_pandas_reads_the_same_way_give_the_same_vectors(tmp_path, layout):
    _write_release(tmp_path, {"icd10cm": [("E11.65", 1.0), ("I10", 3.0)]})
    tokens = ["E11.65:icd10cm", "I10:icd10cm"]
    released = clinvec.lookup(tokens, tmp_path, ["icd10cm"], True).vectors
    path = tmp_path / "ClinVec_icd10cm.csv"
    if layout == "pandas_index_column":  # DataFrame.to_csv() with its index: an empty first header field
        _rewrite(path, ["", *DIMS], lambda i, values: [str(i), *values])
    else:
        _rewrite(path, [*DIMS, "node_index"], lambda i, values: [*values, str(i)])
    assert np.array_equal(clinvec.lookup(tokens, tmp_path, ["icd10cm"], True).vectors, released)


def test_rows_that_do_not_land_on_the_vocabularys_nodes_are_refused(tmp_path):
    """128 fields throughout: pandas' row index is the row number, which here is not ClinGraph's
    node_index (100, 107): the join would give codes other codes' vectors."""
    _write_release(tmp_path, {"icd10cm": [("E11.65", 1.0), ("I10", 3.0)]})
    path = tmp_path / "ClinVec_icd10cm.csv"
    _rewrite(path, DIMS, lambda i, values: values)
    with pytest.raises(DataError, match=r"only 0 of its 2 rows are icd10cm nodes of ClinGraph_nodes\.csv: its row "
                                        r"index must be ClinGraph's node_index"):
        clinvec.lookup(["E11.65:icd10cm"], tmp_path, ["icd10cm"], True)


def test_a_file_of_another_shape_is_one_line(tmp_path):
    _write_release(tmp_path, {"icd10cm": [("E11", 1.0)]})
    (tmp_path / "ClinVec_icd10cm.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="expected ClinVec's layout, a header of 128 names and rows of node_index and "
                                        "128 values; found 2 header fields and 2 fields in the first row"):
        clinvec.lookup(["E11:icd10cm"], tmp_path, ["icd10cm"], True)
    with pytest.raises(DataError, match=r"ClinVec_atc\.csv not found"):
        clinvec.lookup(["E11:icd10cm"], tmp_path, ["atc"], True)


def test_coverage_below_the_floor_stops_with_one_line():
    report = {"icd10cm": {"tokens": 8, "found": 1, "ancestor": {"level_1": 1}, "fresh": 6},
              "cpt": {"tokens": 2, "found": 0, "ancestor": {}, "fresh": 2}}
    clinvec.check_coverage(report, 0.2)
    with pytest.raises(DataError, match=r"ClinVec covers 20% of the 10 codes \(icd10cm 25%, cpt 0%\), below "
                                        r"clinvec.min_coverage 50%") as e:
        clinvec.check_coverage(report, 0.5)
    assert "\n" not in str(e.value)
    nothing = {"icd10cm": {"tokens": 3, "found": 0, "ancestor": {}, "fresh": 3}}
    with pytest.raises(DataError, match="ClinVec covers 0% of the 3 codes"):
        clinvec.check_coverage(nothing, 0.5)


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    # Columns of decreasing spread, so the principal components are known.
    return rng.normal(size=(300, clinvec.DIM)) * np.linspace(5.0, 0.1, clinvec.DIM)


@pytest.mark.parametrize(("method", "hidden"), [("truncate", 32), ("pca", 32), ("learned_projection", 32),
                                                ("pad_smart", 288), ("pad_random", 288), ("truncate", 128)])
def test_resize_shapes(vectors, method, hidden):
    out = clinvec.resize(vectors, hidden, method, seed=0)
    assert out.shape == (300, clinvec.DIM if method == "learned_projection" else hidden)


def test_pca_keeps_the_top_variance(vectors):
    out = clinvec.resize(vectors, 16, "pca", seed=0)
    eigen = np.sort(np.linalg.eigvalsh(np.cov(vectors, rowvar=False)))[::-1]
    np.testing.assert_allclose(out.var(axis=0, ddof=1), eigen[:16], rtol=1e-8)
    # More than any 16 of the original columns keep, e.g. the last (least spread) ones.
    assert out.var(axis=0).sum() > clinvec.resize(vectors[:, ::-1], 16, "truncate", 0).var(axis=0).sum()


@pytest.mark.parametrize("method", ["pad_smart", "pad_random"])
def test_padding_keeps_the_original_dimensions(vectors, method):
    out = clinvec.resize(vectors, 200, method, seed=0)
    np.testing.assert_array_equal(out[:, :clinvec.DIM], vectors)
    assert out[:, clinvec.DIM:].std() > 0


def test_auto_rule_and_impossible_resizes(vectors):
    assert clinvec.resolve_method("auto", 128, 10) == "truncate"
    assert clinvec.resolve_method("auto", 32, 300) == "pca"
    assert clinvec.resolve_method("auto", 32, 10) == "truncate"
    assert clinvec.resolve_method("auto", 288, 300) == "pad_smart"
    with pytest.raises(ConfigError, match="cannot widen"):
        clinvec.resize(vectors, 200, "truncate", 0)
    with pytest.raises(ConfigError, match="cannot narrow"):
        clinvec.resize(vectors, 64, "pad_smart", 0)
