import pytest

from mlplatform.registry import parse_model_ref


@pytest.mark.parametrize("ref,expected", [
    ("fraud@champion", ("fraud", "champion", None)),
    ("fraud/3", ("fraud", None, "3")),
    ("fraud", ("fraud", "champion", None)),
    ("fraud@challenger-2", ("fraud", "challenger-2", None)),
])
def test_parse(ref, expected):
    assert parse_model_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "fraud@", "fraud/x", "@champion", "a/b/c"])
def test_bad_refs(ref):
    with pytest.raises(ValueError, match="invalid model reference"):
        parse_model_ref(ref)
