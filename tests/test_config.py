"""Config validation: defaults, aliases, overrides and errors that name the key."""

import pytest

from vireg.config import config_from_dict, load_config, variational_family
from vireg.errors import InputError

BASE = {"data": {"path": "d.csv", "response": "y"}, "model": {"family": "logistic"}}


def test_defaults_and_family_aliases():
    cfg = config_from_dict(BASE)
    assert cfg.model.family == "bernoulli" and cfg.model.intercept is True
    assert cfg.inference.family == "auto" and cfg.inference.estimator is None
    assert variational_family("auto", 200) == "fullrank" == variational_family("fullrank", 900)
    assert variational_family("auto", 201) == "meanfield"
    mf = config_from_dict({**BASE, "inference": {"family": "meanfield"}})
    assert mf.inference.estimator == "reparam"
    assert cfg.inference.samples == "auto" and cfg.inference.max_steps > 0
    assert config_from_dict({**BASE, "model": {"family": "linear"}}).model.family == "gaussian"


def test_dotted_overrides_are_typed_by_yaml():
    cfg = config_from_dict(BASE, overrides=["inference.learning_rate=0.01",
                                            "data.covariates=[a, b]", "model.intercept=false"])
    assert cfg.inference.learning_rate == 0.01
    assert cfg.data.covariates == ["a", "b"] and cfg.model.intercept is False


@pytest.mark.parametrize(("change", "words"), [
    ({"inference": {"sampels": 3}}, ["inference.sampels", "samples"]),
    ({"model": {"family": "logistic", "priors": {}}}, ["model.priors", "prior"]),
    ({"inference": {"samples": 0}}, ["inference.samples", "at least 1"]),
    ({"inference": {"samples": 2.5}}, ["inference.samples", "integer or auto"]),
    ({"inference": {"samples": "many"}}, ["inference.samples", "integer or auto"]),
    ({"inference": {"learning_rate": -1}}, ["learning_rate", "positive"]),
    ({"model": {"family": "logistic", "intercept": "yes"}}, ["model.intercept", "true or false"]),
    ({"model": {"family": "logistic", "prior": {"sigma": "half_normal(1)"}}},
     ["model.prior.sigma", "gaussian"]),
    ({"model": {"family": "gaussian", "sigma": -2.0}}, ["model.sigma", "positive"]),
    ({"data": {"path": "d.csv"}}, ["data.response", "required"]),
    ({"inference": {"family": "fullrnk"}}, ["inference.family", "meanfield"]),
])
def test_invalid_configs_name_the_key(change, words):
    raw = {**BASE, **change}
    with pytest.raises(InputError) as info:
        config_from_dict(raw)
    for w in words:
        assert w in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_gives_line_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  path: d.csv\n  response: [y\nmodel: {family: gaussian}\n")
    with pytest.raises(InputError, match="line"):
        load_config(path)


def test_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data: {path: ../d.csv, response: y}\nmodel: {family: gaussian}\n")
    cfg = load_config(path)
    assert cfg.resolve_path(cfg.data.path) == tmp_path / "d.csv"


def test_resolved_config_round_trips_through_plain_data(tmp_path):
    cfg = config_from_dict({**BASE, "inference": {"family": "fullrank"},
                            "model": {"family": "linear", "prior": {"sigma": "half_normal(2)"}}},
                           base_dir=tmp_path)
    again = config_from_dict(cfg.to_dict(), base_dir=cfg.base_dir)
    assert again == cfg
    assert again.inference.estimator == "stl"  # the family's default, resolved


def test_exponent_notation_without_a_dot_is_a_number():
    cfg = config_from_dict({**BASE, "inference": {"tolerance": "1e-3"}},
                           overrides=["inference.learning_rate=1e-2"])
    assert cfg.inference.tolerance == 1e-3 and cfg.inference.learning_rate == 1e-2


def test_formula_replaces_response_and_covariates():
    from vireg.config import config_from_dict
    from vireg.errors import InputError

    base = {"data": {"path": "d.csv", "formula": "y ~ x"}, "model": {"family": "gaussian"}}
    assert config_from_dict(base).data.formula == "y ~ x"
    for extra in ({"response": "y"}, {"covariates": ["x"]}):
        with pytest.raises(InputError, match="data.formula names the response"):
            config_from_dict({**base, "data": {**base["data"], **extra}})
    with pytest.raises(InputError, match="data.response' is required"):
        config_from_dict({"data": {"path": "d.csv"}, "model": {"family": "gaussian"}})


def test_set_data_path_to_standard_input_is_the_string_dash():
    from vireg.config import parse_overrides

    assert parse_overrides(["data.path=-"]) == [(["data", "path"], "-")]
    assert parse_overrides(["inference.seed=3"]) == [(["inference", "seed"], 3)]


def test_the_configuration_reference_matches_the_schema():
    """docs/configuration.md's example config uses only keys the schema has, and the page names
    every key the schema has (the schema is the dataclasses of vireg.config)."""
    import re
    from pathlib import Path

    import yaml

    from vireg.config import SCHEMA

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", page, re.S).group(1))

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and key != "overrides":
                yield from leaves(value, path + ".")
            else:
                yield path

    schema_keys = set(leaves(SCHEMA))
    assert set(leaves(example)) <= schema_keys, set(leaves(example)) - schema_keys
    missing = [k for k in schema_keys if k.rsplit(".", 1)[-1] not in page]
    assert not missing, missing
