"""BackendOptions parsing: every key and value is checked, nothing is dropped silently."""
import dataclasses
import pathlib

import pytest
import torch

from fxpurify.options import MODES, VALID_KEYS, BackendOptions, parse_backend_options


def test_defaults():
    opts = parse_backend_options()
    assert opts == BackendOptions()
    assert (opts.inner, opts.input_mutations, opts.strict, opts.report_dir) == (
        "eager", "copy_back", False, None)
    assert opts.config_patches() == {}


def test_options_dict_is_parsed_into_frozen_object(tmp_path):
    opts = parse_backend_options({"inner": "inductor", "input_mutations": "error",
                                  "strict": True, "report_dir": tmp_path, "log_report": False})
    assert opts.inner == "inductor" and opts.input_mutations == "error" and opts.strict
    assert opts.report_dir == str(tmp_path) and opts.log_report is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.inner = "eager"
    hash(opts)  # frozen and hashable: usable as a cache key


def test_unknown_key_names_valid_keys():
    with pytest.raises(ValueError, match="unknown option.*'innr'") as info:
        parse_backend_options({"innr": "eager"})
    for key in VALID_KEYS:
        assert key in str(info.value)


@pytest.mark.parametrize("key,value,valid", [
    ("inner", "aot_eager", ["'eager'", "'inductor'"]),
    ("input_mutations", "ignore", ["'copy_back'", "'error'"]),
])
def test_bad_choice_names_valid_values(key, value, valid):
    with pytest.raises(ValueError, match=repr(value)) as info:
        parse_backend_options({key: value})
    for v in valid:
        assert v in str(info.value)


@pytest.mark.parametrize("key,value", [("strict", "yes"), ("log_report", 1), ("report_dir", 3)])
def test_bad_types_raise(key, value):
    with pytest.raises(ValueError, match=key):
        parse_backend_options({key: value})


def test_options_must_be_a_dict():
    with pytest.raises(ValueError, match="must be a dict"):
        parse_backend_options(["inner"])


def test_mode_and_options_together_raise():
    with pytest.raises(ValueError, match="either mode= or options="):
        parse_backend_options({"inner": "eager"}, mode="max-autotune")


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
def test_inductor_modes_map_to_inner_inductor_with_its_patches(mode):
    opts = parse_backend_options(mode=mode)
    assert opts.inner == "inductor"
    assert opts.config_patches() == torch._inductor.list_mode_options(mode)


def test_default_mode_is_the_default():
    assert parse_backend_options(mode="default") == BackendOptions()


def test_unknown_mode_names_valid_modes():
    with pytest.raises(ValueError, match="unknown mode 'fast'") as info:
        parse_backend_options(mode="fast")
    for mode in MODES:
        assert repr(mode) in str(info.value)


def test_inductor_config_dict_and_inner_check():
    opts = parse_backend_options({"inner": "inductor", "inductor_config": {"max_autotune": True}})
    assert opts.config_patches() == {"max_autotune": True}
    with pytest.raises(ValueError, match="only applies to inner='inductor'"):
        parse_backend_options({"inductor_config": {"max_autotune": True}})
    with pytest.raises(ValueError, match="inductor_config"):
        parse_backend_options({"inner": "inductor", "inductor_config": "max_autotune"})


def test_options_object_passes_through_and_is_validated_when_built():
    opts = BackendOptions(inner="inductor")
    assert parse_backend_options(opts) is opts
    with pytest.raises(ValueError, match="valid values"):
        BackendOptions(inner="tvm")


def test_pathlike_report_dir():
    opts = parse_backend_options({"report_dir": pathlib.Path("/tmp/x")})
    assert opts.report_dir == "/tmp/x"
