"""Tool schemas come from signatures and docstrings; validation uses the very same schema."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import pytest

from agent.llm.toolspec import Range, ToolArgumentError, parse_docstring, tool_spec


def train_sample(steps: Annotated[int, Range(1, 5000)], learning_rate: Annotated[float, Range(1e-6, 1e-3)] = 1e-4,
                 optimizer: Literal["adamw", "prodigy"] = "adamw", use_lcm: bool = False,
                 prompts: list[str] | None = None, note: Optional[str] = None,
                 adjustments: dict[str, float] | None = None) -> dict:
    """Train the LoRA for a number of steps.

    Longer training fits the references more closely.

    Args:
        steps: How many optimiser steps to run.
        learning_rate (float): Step size of the optimiser;
            too high makes the LoRA burn in.
        optimizer: Which optimiser to use.
        use_lcm: Whether to sample with the LCM LoRA.
        prompts: Prompts to sample after training.
        note: Free text kept in the history.
        adjustments: Hyperparameter changes by name.

    Returns:
        A summary of the run.
    """
    return {"steps": steps}


def test_schema_types_required_enums_ranges_and_descriptions() -> None:
    spec = tool_spec(train_sample)
    schema = spec.openai_schema()
    assert schema["type"] == "function"
    assert schema["function"]["name"] == "train_sample"
    assert spec.description == "Train the LoRA for a number of steps. Longer training fits the references more closely."
    props = spec.parameters["properties"]
    assert spec.parameters["required"] == ["steps"]
    assert spec.parameters["additionalProperties"] is False
    assert props["steps"] == {"type": "integer", "minimum": 1, "maximum": 5000,
                              "description": "How many optimiser steps to run."}
    assert props["learning_rate"]["type"] == "number"
    assert props["learning_rate"]["minimum"] == 1e-6 and props["learning_rate"]["maximum"] == 1e-3
    assert props["learning_rate"]["default"] == 1e-4
    # continuation line joined, "(float)" type hint stripped from the description
    assert props["learning_rate"]["description"] == "Step size of the optimiser; too high makes the LoRA burn in."
    assert props["optimizer"]["enum"] == ["adamw", "prodigy"] and props["optimizer"]["type"] == "string"
    assert props["use_lcm"]["type"] == "boolean" and props["use_lcm"]["default"] is False
    assert props["prompts"]["type"] == "array" and props["prompts"]["items"] == {"type": "string"}
    assert props["prompts"]["nullable"] is True and "default" not in props["prompts"]
    assert props["note"]["type"] == "string" and props["note"]["nullable"] is True
    assert props["adjustments"]["additionalProperties"] == {"type": "number"}
    assert "Returns" not in spec.description


def test_valid_arguments_are_normalised() -> None:
    spec = tool_spec(train_sample)
    args = spec.parse_arguments('{"steps": 10.0, "learning_rate": 0.0002, "optimizer": "prodigy", '
                                '"prompts": ["a", "b"], "adjustments": {"rank": 8}}')
    assert args == {"steps": 10, "learning_rate": 0.0002, "optimizer": "prodigy", "prompts": ["a", "b"],
                    "adjustments": {"rank": 8.0}}
    assert isinstance(args["steps"], int) and isinstance(args["adjustments"]["rank"], float)
    assert spec(**args) == {"steps": 10}
    assert spec.parse_arguments('{"steps": 3, "note": null}') == {"steps": 3, "note": None}


@pytest.mark.parametrize("raw, expected", [
    ('{"steps": 10', "not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
    ('{}', "missing required argument(s) steps"),
    ('{"steps": 0}', "steps = 0 is below the minimum 1"),
    ('{"steps": 9000}', "steps = 9000 is above the maximum 5000"),
    ('{"steps": 2.5}', "steps = 2.5 must be an integer"),
    ('{"steps": "10"}', 'steps = "10" must be an integer'),
    ('{"steps": true}', "steps = true must be an integer"),
    ('{"steps": 5, "learning_rate": 0.5}', "learning_rate = 0.5 is above the maximum 0.001"),
    ('{"steps": 5, "learning_rate": NaN}', "learning_rate = NaN must be a finite number"),
    ('{"steps": 5, "learning_rate": -Infinity}', "learning_rate = -Infinity must be a finite number"),
    ('{"steps": 5, "optimizer": "sgd"}', 'optimizer = "sgd" is not one of "adamw", "prodigy"'),
    ('{"steps": 5, "use_lcm": "yes"}', "use_lcm = \"yes\" must be true or false"),
    ('{"steps": 5, "prompts": ["ok", 3]}', "prompts[1] = 3 must be a string"),
    ('{"steps": 5, "adjustments": {"rank": "big"}}', 'adjustments.rank = "big" must be a number'),
    ('{"steps": 5, "colour": "red"}', "unknown argument(s) colour"),
])
def test_invalid_arguments_raise_an_explaining_error(raw: str, expected: str) -> None:
    with pytest.raises(ToolArgumentError) as caught:
        tool_spec(train_sample).parse_arguments(raw)
    assert expected in str(caught.value)
    assert str(caught.value).startswith("train_sample")


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ToolArgumentError) as caught:
        tool_spec(train_sample).parse_arguments('{"learning_rate": -1, "optimizer": "sgd"}')
    message = str(caught.value)
    assert "missing required argument(s) steps" in message
    assert "below the minimum" in message and "is not one of" in message


def test_bound_methods_drop_self_and_missing_annotations_are_refused() -> None:
    class Tools:
        def score(self, round_number: int = 1) -> dict:
            """Score a round.

            Args:
                round_number: Which round.
            """
            return {"round": round_number}

    spec = tool_spec(Tools().score)
    assert list(spec.parameters["properties"]) == ["round_number"]
    assert spec.parameters["required"] == []
    assert spec(**spec.parse_arguments("")) == {"round": 1}

    def untyped(x):  # noqa: ANN001
        """No types."""

    with pytest.raises(TypeError):
        tool_spec(untyped)


def test_docstring_parser_handles_typed_names_and_sections() -> None:
    summary, args = parse_docstring("Do it.\n\nArgs:\n    a (int): first\n        more\n    b: second\n\nRaises:\n    X: never")
    assert summary == "Do it."
    assert args == {"a": "first more", "b": "second"}


def test_a_parameter_group_expands_in_place_of_its_keyword_arguments() -> None:
    # The knob table gives every knob tool the same parameters, ranged by the session's bounds.
    from pathlib import Path

    from agent.rounds.knobs import NAMES, bounds_for, knob_parameters
    from agent.llm.decider import DecisionTools

    def adjust(rationale: str, **knobs) -> dict:
        """Change knobs.

        Args:
            rationale: Why.
        """
        return knobs

    bounds = bounds_for({"steps": 30}, tiny=True)
    spec = tool_spec(adjust, groups={"knobs": knob_parameters(bounds)})
    properties = spec.parameters["properties"]
    assert list(properties) == ["rationale", *NAMES] and spec.parameters["required"] == ["rationale"]
    assert properties["steps"]["type"] == "integer" and properties["steps"]["maximum"] == 60
    assert properties["feature_emphasis"]["type"] == "array" and properties["learning_rate"]["nullable"]
    assert spec(**spec.parse_arguments('{"rationale": "r", "steps": 40}')) == {"steps": 40}
    with pytest.raises(ToolArgumentError, match="steps = 500 is above the maximum 60"):
        spec.parse_arguments('{"rationale": "r", "steps": 500}')
    propose = next(t for t in DecisionTools({}, [], {}, bounds, Path(".")).specs() if t.name == "propose_adjustment")
    assert {name: propose.parameters["properties"][name] for name in NAMES} == {name: properties[name] for name in NAMES}
