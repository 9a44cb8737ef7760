"""Search spaces: bundled YAMLs, seeds, FixedTrial/optuna agreement, and rejected YAMLs."""
import textwrap

import optuna
import pytest
import yaml

from autocompress.recipe import Recipe, Step
from autocompress.search.space import SpaceError, bundled_spaces, load_space, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(text: str):
    return parse_space(textwrap.dedent(text))


@pytest.mark.parametrize("name", ["quick", "default"])
def test_bundled_spaces_load_and_validate(name):
    s = load_space(name)
    assert s.name == name
    structure = ["drop_layers", "prune_heads", "prune_ffn"] + (
        ["share_layers", "low_rank", "factorize_embeddings", "magnitude_prune"] if name == "default" else [])
    recovery = ["distill"] + (["early_exit"] if name == "default" else [])
    assert [st["method"] for st in s.steps] == structure + recovery + ["quantize_int8"]
    assert s.trials == {"quick": 12, "default": 14}[name]
    assert s.seeds and yaml.safe_load(s.text)["name"] == name
    s.validate(6)
    for seed in s.seeds:
        assert isinstance(s.recipe_from_params(seed, 6), Recipe)


def test_bundled_names():
    assert {"quick", "default"} <= set(bundled_spaces())


def test_quick_seeds_give_expected_recipes():
    s = load_space("quick")
    got = [s.recipe_from_params(seed, 6).short() for seed in s.seeds]
    assert got == ["int8", "layers 5 · ffn -25% · kd 600 · int8", "layers 4 · kd 600 · int8"]
    r = s.recipe_from_params(s.seeds[2], 6)
    assert r == Recipe((Step("drop_layers", {"keep": 4, "strategy": "top"}),
                        Step("distill", {"steps": 600, "lr": 2e-4}), Step("quantize_int8")))
    assert r.hash == Recipe.from_json(r.to_json()).hash


def test_default_seeds_give_expected_recipes():
    s = load_space("default")
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
    s = load_space("default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    hashes = set()
    for _ in range(25):
        trial = study.ask()
        r = s.suggest(trial, 6)
        assert isinstance(r, Recipe)
        again = s.recipe_from_params(trial.params, 6)
        assert again.hash == r.hash and again == r
        methods = [st.method for st in r.steps]
        assert ("distill" in methods) == any(m in methods for m in ("drop_layers", "prune_heads", "prune_ffn"))
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
