"""Search spaces: bundled YAMLs, seeds, FixedTrial/optuna agreement, and rejected YAMLs."""
import textwrap

import optuna
import pytest
import yaml

from autocompress.methods.base import get_method
from autocompress.recipe import Recipe, Step
from autocompress.search.space import SpaceError, bundled_spaces, load_space, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(text: str):
    return parse_space(textwrap.dedent(text))


@pytest.mark.parametrize("name", ["quick", "default", "full"])
def test_bundled_spaces_load_and_validate(name):
    s = load_space(name)
    assert s.name == name
    structure = ["drop_layers", "prune_heads", "prune_ffn"] + (
        ["share_layers", "low_rank", "factorize_embeddings", "magnitude_prune"] if name == "full" else [])
    recovery = ["distill"] + (["early_exit"] if name == "full" else [])
    assert [st.get("method", st.get("choose")) for st in s.steps] == structure + recovery + [
        "quantize_int8" if name == "quick" else "quantization"]
    assert s.trials == {"quick": 12, "default": 12, "full": 14}[name]
    assert (s.finish is not None) == (name == "default")      # the finishing stage: the default space's
    assert s.seeds and yaml.safe_load(s.text)["name"] == name
    s.validate(6)
    for seed in s.seeds:
        assert isinstance(s.recipe_from_params(seed, 6), Recipe)


def test_bundled_names():
    assert {"quick", "default", "full"} <= set(bundled_spaces())


def test_the_default_space_searches_speed_and_finishes_long():
    """Only methods that buy speed (size-only ones and early exit are in `full`); its seeds are int8 alone
    and depth cuts with int8; its finishing stage distils with hidden states and attention for long."""
    from autocompress.methods import get_method

    s = load_space("default")
    methods = {st.get("method") for st in s.steps} | {o["method"] for st in s.steps for o in st.get("steps", [])}
    assert not any(get_method(m).size_only or get_method(m).input_dependent_latency for m in methods if m)
    got = [s.recipe_from_params(seed, 6).short() for seed in s.seeds]
    assert got[0] == "int8" and all(g.endswith("int8") for g in got) and "layers 2" in got[-1]
    assert s.finish["distill"]["steps"] >= 2000 and s.finish["distill"]["attention"] > 0


def test_quick_seeds_give_expected_recipes():
    s = load_space("quick")
    got = [s.recipe_from_params(seed, 6).short() for seed in s.seeds]
    assert got == ["int8", "layers 5 · ffn -25% · kd 600 · int8", "layers 4 · kd 600 · int8"]
    r = s.recipe_from_params(s.seeds[2], 6)
    assert r == Recipe((Step("drop_layers", {"keep": 4, "strategy": "top"}),
                        Step("distill", {"steps": 600, "lr": 2e-4}), Step("quantize_int8")))
    assert r.hash == Recipe.from_json(r.to_json()).hash


def test_full_seeds_give_expected_recipes():
    s = load_space("full")
    r = s.recipe_from_params(s.seeds[1], 6)
    assert r.short() == "layers 4 · ffn -25% · kd 600 · int8"
    distill = next(st for st in r.steps if st.method == "distill")
    assert distill.config.lr == 2e-4 and distill.config.temperature == 2.0


def test_identity_steps_are_dropped():
    s = load_space("quick")
    params = {"drop_layers.keep": 6, "prune_heads.ratio": 0.0, "prune_ffn.ratio": 0.0}
    assert s.recipe_from_params({**params, "quantize_int8": True}, 6) == Recipe((Step("quantize_int8"),))
    # nothing changed and no int8: the unchanged model, no distillation even though distill.steps is given
    assert s.recipe_from_params({**params, "quantize_int8": False, "distill.steps": 300}, 6) == Recipe()
    # keep >= the model's depth is an identity too
    assert s.recipe_from_params({**params, "quantize_int8": False}, 4).steps == ()
    # one real change brings distillation in
    r = s.recipe_from_params({**params, "prune_heads.ratio": 0.25, "distill.steps": 600, "quantize_int8": False}, 6)
    assert [st.method for st in r.steps] == ["prune_heads", "distill"]


def test_missing_parameter_for_fixed_trial():
    s = load_space("quick")
    with pytest.raises(ValueError):
        s.recipe_from_params({"drop_layers.keep": 4}, 6)        # no prune_heads.ratio ...


def test_optuna_trials_reproduce_from_params():
    s = load_space("full")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    hashes = set()
    for _ in range(25):
        trial = study.ask()
        r = s.suggest(trial, 6)
        assert isinstance(r, Recipe)
        again = s.recipe_from_params(trial.params, 6)
        assert again.hash == r.hash and again == r
        methods = [st.method for st in r.steps]
        assert ("distill" in methods) == any(get_method(m).stage == "structure" for m in methods)
        for st in r.steps:                                        # all within the space's bounds
            c = st.config
            if st.method == "drop_layers":
                assert 2 <= c.keep <= 5 and c.strategy in ("top", "alternate")
            elif st.method == "prune_heads":
                assert c.ratio in (0.25, 0.5, 0.75)
            elif st.method == "distill":
                assert c.steps in range(200, 601, 100) and 5e-5 <= c.lr <= 3e-4 and c.temperature in (1.0, 2.0, 4.0)
        study.tell(trial, 0.5)
        hashes.add(r.hash)
    assert len(hashes) > 10                                       # the sampler really explores


def test_custom_space_from_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("steps:\n  - method: drop_layers\n    params: {keep: {choices: [2, 3]}}\n")
    s = load_space(str(p))
    assert s.name == "mine" and s.trials == 12 and s.seeds == []
    s.validate(6)
    assert s.recipe_from_params({"drop_layers.keep": 3}, 6).short() == "layers 3"
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(str(tmp_path / "other.yaml"))


def test_unknown_space_name():
    with pytest.raises(SpaceError, match="nonesuch") as e:
        load_space("nonesuch")
    assert "quick" in str(e.value) and "default" in str(e.value)


BAD = {
    "unknown method": ("steps:\n  - method: prune_everything\n", "prune_everything"),
    "unknown parameter": ("steps:\n  - method: prune_heads\n    params: {fraction: 0.5}\n", "fraction"),
    "low > high": ("steps:\n  - method: drop_layers\n    params: {keep: {int: [5, 2]}}\n", "low <= high"),
    "two kinds": ("steps:\n  - method: drop_layers\n    params: {keep: {int: [2, 5], choices: [2, 3]}}\n",
                  "exactly one"),
    "no kind": ("steps:\n  - method: drop_layers\n    params: {keep: {step: 1}}\n", "exactly one"),
    "empty choices": ("steps:\n  - method: drop_layers\n    params: {keep: {choices: []}}\n", "non-empty"),
    "bad bounds": ("steps:\n  - method: drop_layers\n    params: {keep: {int: [2]}}\n", "low <= high"),
    "unknown range key": ("steps:\n  - method: drop_layers\n    params: {keep: {int: [2, 5], stepp: 1}}\n", "stepp"),
    "empty steps": ("name: x\nsteps: []\n", "non-empty 'steps'"),
    "no steps": ("name: x\n", "non-empty 'steps'"),
    "not a mapping": ("- method: distill\n", "mapping"),
    "unknown step key": ("steps:\n  - method: quantize_int8\n    optinal: true\n", "optinal"),
    "step without method": ("steps:\n  - params: {keep: 2}\n", "method"),
    "bad when": ("steps:\n  - method: distill\n    when: always\n    params: {steps: 10}\n", "when"),
    "bad trials": ("trials: 0\nsteps:\n  - method: quantize_int8\n", "trials"),
    "bad seeds": ("steps:\n  - method: quantize_int8\nseeds: [1, 2]\n", "seeds"),
    "not yaml": ("steps: [\n", "YAML"),
    "choose without steps": ("steps:\n  - choose: precision\n", "non-empty 'steps'"),
    "choose twice the same": ("steps:\n  - choose: p\n    steps: [{method: quantize_int8}, {method: quantize_int8}]\n",
                              "distinct"),
    "choose step with optional": ("steps:\n  - choose: p\n    steps: [{method: quantize_int8, optional: true}]\n",
                                  "'method' and its 'params' only"),
    "choose name with a dot": ("steps:\n  - choose: p.q\n    steps: [{method: quantize_int8}]\n", "without dots"),
    "choose unknown key": ("steps:\n  - choose: p\n    optinal: true\n    steps: [{method: quantize_int8}]\n", "optinal"),
    "choose unknown parameter": ("steps:\n  - choose: p\n    steps: [{method: quantize_static, params: {bins: 8}}]\n",
                                 "bins"),
    "choose unknown method": ("steps:\n  - choose: p\n    steps: [{method: quantize_int4}]\n", "quantize_int4"),
    "choose and again": ("steps:\n  - method: quantize_int8\n    optional: true\n  - choose: p\n"
                         "    steps: [{method: quantize_int8}, {method: quantize_fp16}]\n", "list it once"),
    "optional not a bool": ("steps:\n  - method: distill\n    params: {steps: 10, hidden: {float: [1, 2], optional: 1}}\n",
                            "optional must be true or false"),
    "misspelt optional": ("steps:\n  - method: distill\n    params: {steps: 10, hidden: {float: [1, 2], optinal: true}}\n",
                          "optinal"),
    "unknown choices key": ("steps:\n  - method: distill\n    params: {steps: 10, mapping: {choices: [last], log: true}}\n",
                            "unknown key 'log'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spaces(case):
    text, word = BAD[case]
    with pytest.raises(SpaceError, match=word):
        parse_space(text)


def test_validate_rejects_impossible_bounds():
    # parses (ratio 1.0 is a number), but the upper corner is an invalid recipe
    s = space("""
        name: wide
        steps:
          - method: prune_heads
            params: {ratio: {float: [0.0, 1.0]}}
    """)
    with pytest.raises(SpaceError, match=r"prune_heads.ratio = 1.0: prune_heads: ratio must be in \[0, 1\)"):
        s.validate(6)


@pytest.mark.parametrize("params,match", [
    ("{steps: {int: [0, 100]}}", r"distill.steps = 0: distill: steps must be an int >= 1"),          # lower bound
    ("{steps: 10, lr: {float: [0.0, 0.1], log: true}}", r"distill.lr.*log"),                       # Optuna's own check
    ("{steps: 10, temperature: {choices: [2.0, -1.0]}}", r"distill.temperature = -1.0"),           # every choice
    ("{steps: {int: [10, 20], step: 10, log: true}}", r"distill.steps"),                            # step and log clash
])
def test_validate_checks_every_parameter_edge(params, match):
    """A parameter's edges are checked on their own, even where its step is conditional ('when: changed'
    after a step whose lower corner changes nothing) and would never be built at the space's corners."""
    s = space(f"""
        name: edges
        steps:
          - method: prune_ffn
            params: {{ratio: {{float: [0.0, 0.5], step: 0.25}}}}
          - method: distill
            when: changed
            params: {params}
    """)
    with pytest.raises(SpaceError, match=match):
        s.validate(6)


def test_validate_rejects_unknown_seed_parameter():
    s = space("""
        name: seeded
        steps:
          - method: drop_layers
            params: {keep: {int: [2, 4]}}
        seeds:
          - {drop_layers.kep: 3}
    """)
    with pytest.raises(SpaceError, match="seed 1: 'drop_layers.kep' is not a parameter of this space"):
        s.validate(6)


@pytest.mark.filterwarnings("ignore:The value 0:UserWarning")      # optuna: 0 is outside [2, 4]
def test_validate_rejects_bad_seed():
    s = space("""
        name: seeded
        steps:
          - method: drop_layers
            params: {keep: {int: [2, 4]}}
        seeds:
          - {drop_layers.keep: 3}
          - {drop_layers.keep: 0}
    """)
    # messages number the seeds from 1: the second seed is "seed 2"
    with pytest.raises(SpaceError, match=r"'seeded', seed 2: drop_layers.keep = 0 is outside its range"):
        s.validate(6)


def test_constant_and_optional_steps():
    s = space("""
        steps:
          - method: drop_layers
            params: {keep: 3, strategy: alternate}
          - method: distill
            when: changed
            params: {steps: 10}
          - method: quantize_int8
            optional: true
            params: {per_channel: {choices: [true, false]}}
    """)
    r = s.recipe_from_params({"quantize_int8": True, "quantize_int8.per_channel": False}, 6)
    assert r.short() == "layers 3 alt · kd 10 · int8"
    assert r.steps[-1].config.per_channel is False
    assert s.recipe_from_params({"quantize_int8": False}, 6).short() == "layers 3 alt · kd 10"


CONDITIONAL = """
    name: conditional
    steps:
      - method: drop_layers
        params: {keep: 3}
      - method: distill
        params:
          steps: 10
          attention: {float: [0.5, 4.0], log: true, optional: true}
          mapping: {choices: [origin, uniform], optional: true}
"""


def test_optional_parameters_exist_only_when_switched_on():
    s = space(CONDITIONAL)
    s.validate(6)
    assert s.params() == {"distill.attention.on": {"choices": [True, False]},
                          "distill.attention": {"float": [0.5, 4.0], "log": True},
                          "distill.mapping.on": {"choices": [True, False]},
                          "distill.mapping": {"choices": ["origin", "uniform"]}}
    off = s.recipe_from_params({"distill.attention.on": False, "distill.mapping.on": False}, 6)
    assert off.short() == "layers 3 · kd 10" and off.steps[1].config.attention == 0.0        # the default: no target
    on = s.recipe_from_params({"distill.attention.on": True, "distill.attention": 2.0,
                               "distill.mapping.on": True, "distill.mapping": "uniform"}, 6)
    assert on.short() == "layers 3 · kd 10 +att uniform" and on.steps[1].config.attention == 2.0
    with pytest.raises(ValueError):           # switched on, the value must be there
        s.recipe_from_params({"distill.attention.on": True, "distill.mapping.on": False}, 6)
    # the searcher asks for a value only after switching it on
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        r = s.suggest(trial, 6)
        on = trial.params["distill.attention.on"]
        seen.add(on)
        assert ("distill.attention" in trial.params) == on
        assert (r.steps[1].config.attention > 0) == on
        assert s.recipe_from_params(trial.params, 6).hash == r.hash
        study.tell(trial, 0.5)
    assert seen == {True, False}


def test_optional_parameters_are_validated_as_if_switched_on():
    s = space(CONDITIONAL.replace("[0.5, 4.0], log: true", "[-1.0, 4.0]"))
    with pytest.raises(SpaceError, match=r"distill: attention \(a loss weight\) must be a number >= 0, got -1.0"):
        s.validate(6)


def test_identity_is_judged_on_the_layers_left():
    """Sharing in 4 groups changes nothing once only 4 layers are left: it is dropped from the recipe."""
    s = space("""
        steps:
          - method: drop_layers
            params: {keep: {int: [2, 6]}}
          - method: share_layers
            params: {groups: 4}
    """)
    assert s.recipe_from_params({"drop_layers.keep": 4}, 6).short() == "layers 4"
    assert s.recipe_from_params({"drop_layers.keep": 6}, 6).short() == "share all in 4"
    assert s.recipe_from_params({"drop_layers.keep": 5}, 6).short() == "layers 5 · share all in 4"


def test_combinations_a_method_rules_out_are_rejected_before_any_work():
    s = space("""
        name: clash
        steps:
          - method: magnitude_prune
            params: {sparsity: 0.5}
          - method: prune_ffn
            params: {ratio: {float: [0.0, 0.5], step: 0.25}}
    """)
    with pytest.raises(SpaceError, match="upper corner: prune_ffn cannot come after magnitude_prune: it must be the last"):
        s.validate(6)


# ---------------------------------------------------------------- choose: alternatives
CHOOSE = """
    name: alternatives
    steps:
      - method: prune_ffn
        params: {ratio: {float: [0.0, 0.5], step: 0.25}}
      - choose: precision
        optional: true
        steps:
          - method: quantize_int8
          - method: quantize_static
            params: {calibration: {choices: [minmax, percentile]}, rows: 64}
          - method: quantize_mixed
            params: {keep_fp32: {int: [2, 6], step: 2}}
    seeds:
      - {prune_ffn.ratio: 0.25, precision: quantize_mixed, quantize_mixed.keep_fp32: 4}
      - {prune_ffn.ratio: 0.0, precision: none}
"""


def test_choose_picks_one_step_and_its_parameters_only():
    s = space(CHOOSE)
    s.validate(6)
    assert s.params() == {"precision": {"choices": ["quantize_int8", "quantize_static", "quantize_mixed", "none"]},
                          "prune_ffn.ratio": {"float": [0.0, 0.5], "step": 0.25},
                          "quantize_static.calibration": {"choices": ["minmax", "percentile"]},
                          "quantize_mixed.keep_fp32": {"int": [2, 6], "step": 2}}
    assert [s.recipe_from_params(seed, 6).short() for seed in s.seeds] == ["ffn -25% · int8 mixed (4 fp32)", "fp32 (unchanged)"]
    r = s.recipe_from_params({"prune_ffn.ratio": 0.0, "precision": "quantize_static",
                              "quantize_static.calibration": "percentile"}, 6)       # no keep_fp32 needed
    assert r == Recipe((Step("quantize_static", {"calibration": "percentile", "rows": 64}),))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    picked = set()
    for _ in range(30):
        trial = study.ask()
        r = s.suggest(trial, 6)
        onnx = [st.method for st in r.onnx_steps]
        assert len(onnx) <= 1 and onnx == ([] if trial.params["precision"] == "none" else [trial.params["precision"]])
        assert ("quantize_static.calibration" in trial.params) == (onnx == ["quantize_static"])
        assert ("quantize_mixed.keep_fp32" in trial.params) == (onnx == ["quantize_mixed"])
        assert s.recipe_from_params(trial.params, 6) == r
        picked.add(trial.params["precision"])
        study.tell(trial, 0.0)
    assert picked == {"quantize_int8", "quantize_static", "quantize_mixed", "none"}


def test_choose_without_optional_always_picks_one():
    s = space("""
        steps:
          - choose: precision
            steps: [{method: quantize_int8}, {method: quantize_fp16}]
    """)
    assert s.params() == {"precision": {"choices": ["quantize_int8", "quantize_fp16"]}}
    assert s.recipe_from_params({"precision": "quantize_fp16"}, 6).short() == "fp16"


def test_validate_builds_every_alternative():
    """Each alternative of a choose is built at both corners: here only the second one is impossible."""
    s = space("""
        name: clash
        steps:
          - method: magnitude_prune
            params: {sparsity: 0.5}
          - choose: then
            steps: [{method: distill, params: {steps: 10}}, {method: prune_ffn, params: {ratio: 0.25}}]
    """)
    with pytest.raises(SpaceError, match="lower corner, then = prune_ffn: prune_ffn cannot come after magnitude_prune"):
        s.validate(6)


def test_two_quantization_steps_in_a_space_are_rejected_before_the_search():
    s = space("""
        name: both
        steps:
          - method: quantize_int8
            optional: true
          - method: quantize_static
            optional: true
    """)
    with pytest.raises(SpaceError, match="lower corner: a recipe takes at most one precision step, got "
                                         "quantize_int8 and quantize_static"):
        s.validate(6)


def test_full_space_offers_every_quantization_method_as_alternatives():
    s = load_space("full")
    assert set(s.params()["quantization"]["choices"]) == {"quantize_int8", "quantize_static", "quantize_mixed",
                                                          "quantize_fp16", "none"}
