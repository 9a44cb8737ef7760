"""The contract every bundled hardware profile meets (``hw_profiles/*.yaml``): runs over whatever
``list_profiles()`` finds, so a new profile is checked by adding its YAML."""
import json

import pytest

from autocompress.hardware import HardwareProfile, ProfileError, describe_route, list_profiles, load_profile, route
from autocompress.hardware.obtain import HERE, PREDICTED, RAY

NAMES = list_profiles()


def test_there_are_bundled_profiles():
    assert NAMES and NAMES == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_it_loads_by_name(name):
    p = load_profile(name)
    assert isinstance(p, HardwareProfile) and p.name == name and load_profile(p) is p


@pytest.mark.parametrize("name", NAMES)
def test_it_round_trips_through_json(name):
    """A run keeps its profiles in the store as JSON, and --resume rebuilds them from there."""
    p = load_profile(name)
    assert HardwareProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("name", NAMES)
def test_its_route_is_known(name):
    r = route(load_profile(name))
    assert r.kind in (HERE, RAY, PREDICTED) and r.text.strip()


@pytest.mark.parametrize("name", NAMES)
def test_describe_route_says_how_in_one_line(name):
    p = load_profile(name)
    text = describe_route(p)
    assert text.startswith(("measured", "predicted")) and text.startswith(route(p).text) and "\n" not in text


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_field_is_refused_naming_it(name):
    good = load_profile(name).to_dict()
    for field in [*good, "no_such_field"]:
        d = dict(good, **{field: {"not": "valid"}})
        with pytest.raises(ProfileError) as e:
            HardwareProfile.from_dict(d)
        assert f"'{field}'" in str(e.value) and "\n" not in str(e.value), (field, str(e.value))
