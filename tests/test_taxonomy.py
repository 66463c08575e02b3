import json

import pytest

from tools.errors import InputError
from tools.settings import BUNDLED_TAXONOMY
from tools.scoring.taxonomy import load_taxonomy


def write(tmp_path, data, name="taxonomy.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_bundled_taxonomy_loads_and_fills_templates():
    taxonomy = load_taxonomy(BUNDLED_TAXONOMY)
    assert "face_shape" in taxonomy.categories and "round face" in taxonomy.categories["face_shape"]
    assert taxonomy.fill("round face") == ["a picture of a character with round face",
                                           "an illustration showing round face", "round face"]
    assert taxonomy.category_of("thin mustache") == "facial_hair"


def test_templates_default_to_the_bare_description(tmp_path):
    taxonomy = load_taxonomy(write(tmp_path, {"categories": {"eyes": ["narrow eyes", "round eyes"]}}))
    assert taxonomy.templates == ("{}",)
    assert taxonomy.fill("narrow eyes") == ["narrow eyes"]


def test_other_braces_in_templates_survive(tmp_path):
    taxonomy = load_taxonomy(write(tmp_path, {"templates": ["{x} shows {}"], "categories": {"e": ["a b", "c d"]}}))
    assert taxonomy.fill("a b") == ["{x} shows a b"]


GOOD = {"face": ["round face", "oval face"]}


@pytest.mark.parametrize("data, entry, fix", [
    ("{not json", "not valid JSON", "fix the syntax"),
    ([1, 2], "must be a JSON object", "write it as"),
    ({"templates": ["{}"]}, '"categories" is missing', "add"),
    ({"categories": {}}, '"categories" is missing or empty', "add"),
    ({"categories": {**GOOD, "eyes": "narrow eyes"}}, "category 'eyes' must be a list of non-empty strings",
     '"eyes": ['),
    ({"categories": {**GOOD, "eyes": ["narrow eyes", ""]}}, "category 'eyes' must be a list", '"eyes": ['),
    ({"categories": {**GOOD, "eyes": ["narrow eyes", 3]}}, "category 'eyes' must be a list", '"eyes": ['),
    ({"categories": {**GOOD, "eyes": []}}, "category 'eyes' is empty", "at least two"),
    ({"categories": {**GOOD, "eyes": ["narrow eyes"]}}, "category 'eyes' has a single description", "at least two"),
    ({"templates": ["a picture of", "{}"], "categories": GOOD}, "template #1 'a picture of' has no \"{}\"",
     "put {} where"),
    ({"templates": [], "categories": GOOD}, '"templates" must be a non-empty list', "remove the key"),
    ({"categories": {**GOOD, "shape": ["round face", "tall"]}}, "'round face' appears in category 'face'",
     "must be unique"),
    ({"categories": {**GOOD, "shape": ["ROUND  FACE ", "tall"]}},
     "'ROUND FACE' appears in category 'face' (as 'round face': only case or spaces differ) and again in 'shape'",
     "must be unique"),
    ({"categories": {"eyes": ["narrow eyes", "Narrow Eyes"]}}, "'Narrow Eyes' appears in category 'eyes'",
     "must be unique"),
])
def test_malformed_taxonomy_names_file_entry_and_fix(tmp_path, data, entry, fix):
    path = write(tmp_path, data, "my_taxonomy.json")
    with pytest.raises(InputError) as caught:
        load_taxonomy(path)
    message = str(caught.value)
    assert str(path) in caught.value.problem
    assert entry in caught.value.problem
    assert fix in caught.value.fix
    assert caught.value.exit_code == 2 and "\n" not in message


def test_missing_taxonomy_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_taxonomy(tmp_path / "nope.json")
