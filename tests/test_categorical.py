"""Text and true/false columns are categorical: one 0/1 column per level but the first."""

import numpy as np
import pytest
from conftest import write_csv

import vireg
from vireg.api import build_model
from vireg.config import config_from_dict
from vireg.errors import InputError


def categorical_data(tmp_path, rng, n=600):
    x = rng.standard_normal(n)
    color = rng.choice(["red", "green", "blue"], n)
    flag = rng.choice(["True", "False"], n)
    eta = 0.5 * x + np.select([color == "red", color == "green"], [1.0, -0.5], 0.0) \
        + 0.7 * (flag == "True")
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    return write_csv(tmp_path / "cat.csv", {"y": y, "x": x, "color": color, "flag": flag})


def config(path, **model):
    return {"data": {"path": str(path), "response": "y"},
            "model": {"family": "logistic", **model},
            "inference": {"family": "fullrank"}, "output": {"draws": 0}}


def test_levels_become_indicator_columns_against_the_first_sorted_level(tmp_path, rng):
    model = build_model(config_from_dict(config(categorical_data(tmp_path, rng))))
    assert model.param_names == ["intercept", "x", "color[green]", "color[red]", "flag[True]"]
    assert model.design.encodings["color"] == {"levels": ["blue", "green", "red"],
                                               "reference": "blue"}


def test_categorical_effects_are_recovered(tmp_path, rng):
    result = vireg.fit(config(categorical_data(tmp_path, rng, n=4000)))
    got = dict(zip(result.param_names, result.summary.mean, strict=True))
    sd = dict(zip(result.param_names, result.summary.sd, strict=True))
    for name, truth in {"x": 0.5, "color[green]": -0.5, "color[red]": 1.0, "flag[True]": 0.7}.items():
        assert abs(got[name] - truth) < 4 * sd[name], (name, got[name], sd[name])


def test_an_override_on_the_data_column_applies_to_all_its_levels(tmp_path, rng):
    cfg = config(categorical_data(tmp_path, rng), prior={"overrides": {"color": "normal(0, 5)"}})
    model = build_model(config_from_dict(cfg))
    assert [str(p) for p in model.priors[2:4]] == ["normal(0, 5)"] * 2
    assert model.priors[4].name == "flat"


def test_a_text_cell_among_numbers_is_an_error_not_a_category(tmp_path, rng):
    path = write_csv(tmp_path / "d.csv", {"y": [0, 1, 0, 1, 1, 0], "x": [1, 2, "abc", 4, 5, 6]})
    with pytest.raises(InputError, match="'abc' at data row 3 among numbers"):
        build_model(config_from_dict(config(path)))


def test_an_identifier_column_is_not_a_category(tmp_path):
    n = 300
    path = write_csv(tmp_path / "d.csv", {"y": [i % 2 for i in range(n)],
                                          "id": [f"id{i}" for i in range(n)]})
    with pytest.raises(InputError, match="identifier"):
        build_model(config_from_dict(config(path)))
