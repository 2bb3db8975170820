"""The CSV readers agree: pyarrow's (when installed), NumPy's C parser and the text reader."""

import numpy as np
import pytest

import vireg.data as data


def tables(path):
    pytest.importorskip("pyarrow")
    fast = data._read_csv(path)
    header = list(fast.columns)
    assert data._read_csv_arrow(path, header) is not None  # the pyarrow path was taken
    return fast, data._read_csv_text(path)


def cells(column):
    return [repr(float(v)) for v in column] if isinstance(column, np.ndarray) else column


def test_numeric_text_boolean_and_missing_cells_read_the_same_either_way(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("y,x,g,flag,m\n1,0.5,a,true,1.5\n0,-2,b,false,\n1,3e-3,a,true,NA\n")
    fast, text = tables(path)
    assert fast.n_rows == text.n_rows == 3
    assert isinstance(fast.columns["x"], np.ndarray)
    assert fast.columns["g"] == ["a", "b", "a"] and fast.columns["flag"] == ["true", "false", "true"]
    np.testing.assert_array_equal(fast.columns["y"], data.numeric_column(text, "y"))
    np.testing.assert_array_equal(fast.columns["x"], data.numeric_column(text, "x"))
    assert np.isnan(fast.columns["m"][1:]).all() and fast.columns["m"][0] == 1.5


def test_a_bad_cell_still_gets_its_row_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("y,x\n1,0.5\n0,abc\n1,2\n")
    fast, _ = tables(path)
    with pytest.raises(data.InputError, match="'abc' at data row 2"):
        data.numeric_column(fast, "x")


def test_a_text_cell_far_down_a_numeric_file_falls_back_to_inference(tmp_path):
    """pyarrow reads every column as float64 first; a text cell in a later block of a large file
    must send it back to type inference, with the same cells and messages as the text reader."""
    pytest.importorskip("pyarrow")
    n = 300_000  # several of pyarrow's 1 MB blocks
    rows = [f"{i % 2},{i * 0.5},{i % 7}" for i in range(n)]
    rows[-2] = "1,oops,3"
    path = tmp_path / "t.csv"
    path.write_text("y,x,k\n" + "\n".join(rows) + "\n")
    fast = data._read_csv(path)
    assert isinstance(fast.columns["k"], np.ndarray) and fast.columns["k"][-1] == (n - 1) % 7
    assert fast.columns["x"][-2] == "oops" and fast.columns["x"][3] == "1.5"
    with pytest.raises(data.InputError, match=f"'oops' at data row {n - 1}"):
        data.numeric_column(fast, "x")


def test_parquet_columns_of_many_chunks_and_types_read_as_written(tmp_path):
    """Numeric columns are copied chunk by chunk into one block (``_arrow_columns``): every
    chunk, integer casts, nulls as NaN and text columns must come out as written."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = 10_000
    k = [None if i % 997 == 0 else i % 13 for i in range(n)]
    x = np.arange(n) * 0.25
    g = [f"g{i % 3}" for i in range(n)]
    pq.write_table(pa.table({"k": pa.array(k, pa.int32()), "x": x, "g": g}),
                   tmp_path / "t.parquet", row_group_size=1_500)
    table = data.read_table(tmp_path / "t.parquet")
    assert list(table.columns) == ["k", "x", "g"] and table.n_rows == n
    expected_k = np.array([np.nan if v is None else v for v in k])
    np.testing.assert_array_equal(table.columns["k"], expected_k)
    np.testing.assert_array_equal(table.columns["x"], x)
    assert table.columns["g"] == g
