"""Device profiles: every shipped profile validates; a broken one names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

import device_profiles
from campus.errors import ActionRejected, ProfileError
from device_profiles import Metric, check_action, load_profile, load_profile_file, parse_profile
from protocols import modbus


def test_every_shipped_profile_loads() -> None:
    names = device_profiles.available_profiles()
    assert "env-6in1-modbus" in names
    for name in names:
        profile = load_profile(name)
        assert profile.name == name


def test_environment_profile_names_the_contract_metrics() -> None:
    profile = load_profile("env-6in1-modbus")
    assert set(profile.metrics) == {"temperature_c", "humidity_pct", "co2_ppm", "pm25_ugm3", "illuminance_lux",
                                    "noise_dba"}
    assert profile.kind == "environment" and profile.protocol == "modbus"


BROKEN = """\
name: broken
kind: environment
protocol: modbus
metrics:
  co2_ppm: {register: 2, type: uint16}
  temperature_c: {register: 1, type: int17, scale: 0.1}
"""


def test_broken_profile_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ProfileError) as info:
        load_profile_file(path)
    msg = str(info.value)
    assert f"{path}:6:" in msg and "metrics.temperature_c.type" in msg and "int17" in msg


@pytest.mark.parametrize("text, expect", [
    ("name: x\nkind: environment\nprotocol: modbus\nmetrics: {co2_ppm: {type: uint16}}\n", "'register' is a required"),
    ("name: x\nkind: lamp\nprotocol: modbus\nmetrics: {}\n", "field kind"),
    ("name: x\nkind: display\nprotocol: samsung_mdc\nmetrics: {}\nactions: [select_input]\n", "inputs"),
    ("name: x\nkind: display\nprotocol: samsung_mdc\nmetrics: {}\nactions: [self_destruct]\n", "actions.0"),
    ("name: x\nkind: [\n", "not valid YAML"),
    ("- a list\n", "mapping"),
])
def test_invalid_profiles(text: str, expect: str) -> None:
    with pytest.raises(ProfileError, match=expect):
        parse_profile(text, "t.yaml")


def test_unknown_profile_lists_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="env-6in1-modbus"):
        load_profile("no-such-profile")


@pytest.mark.parametrize("name", ["9" * 5000, "env\x00", "..", "~root"], ids=["too-long", "nul", "dotdot", "tilde"])
def test_a_profile_name_the_file_system_would_choke_on_is_just_unknown(name: str) -> None:
    # Found by a fuzz campaign: a 5,000-character name raised OSError (file name too long).
    with pytest.raises(ProfileError, match="not found") as caught:
        load_profile(name)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("metric, value, raw", [
    (Metric("t", type="int16", scale=0.1), -5.3, [0xFFCB]),
    (Metric("t", type="int16", scale=0.1), 23.1, [231]),
    (Metric("h", type="uint16", scale=0.1), 65.4, [654]),
    (Metric("l", type="uint32", scale=1), 70000, [1, 4464]),
    (Metric("l", type="uint32", scale=1, word_order="little"), 70000, [4464, 1]),
    (Metric("c", type="int32", scale=1), -2, [0xFFFF, 0xFFFE]),
    (Metric("f", type="float32", scale=1), 1.5, [0x3FC0, 0]),
    (Metric("o", type="uint16", scale=0.5, offset=-40), 10.0, [100]),
])
def test_register_scaling(metric: Metric, value: float, raw: list[int]) -> None:
    assert modbus.encode(metric, value) == raw
    assert modbus.decode(metric, raw) == pytest.approx(value)


def test_register_decode_rejects_wrong_count() -> None:
    from campus.errors import DeviceError

    with pytest.raises(DeviceError):
        modbus.decode(Metric("l", type="uint32"), [1])


# ---------------------------------------------------------------- actions: the one check, API and agent


@pytest.mark.parametrize("profile, action, params, field", [
    ("display-lg-serial", "set_volume", {"level": 101}, "params.level"),
    ("display-lg-serial", "set_volume", {"level": -1}, "params.level"),
    ("display-lg-serial", "set_volume", {"level": 50.5}, "params.level"),
    ("display-lg-serial", "set_volume", {"level": float("nan")}, "params.level"),
    ("display-lg-serial", "set_volume", {"level": "50"}, "params.level"),
    ("display-lg-serial", "set_volume", {"level": True}, "params.level"),
    ("display-lg-serial", "set_volume", {}, "params.level"),
    ("display-lg-serial", "set_volume", {"level": 5, "ramp": 1}, "params.ramp"),
    ("display-lg-serial", "select_input", {"input": "hdmi9"}, "params.input"),
    ("display-lg-serial", "select_input", {"input": ["hdmi1"]}, "params.input"),
    ("display-lg-serial", "power_on", {"force": True}, "params.force"),
    ("display-lg-serial", "mute", [], "params"),
    ("display-lg-serial", "explode", {}, "action"),
    ("projector-pjlink", "set_volume", {"level": 5}, "action"),  # not in this profile
    ("env-6in1-modbus", "power_on", {}, "action"),
    (None, "select_input", {"input": "HDMI 1\n"}, "params.input"),  # a profile central does not ship
    (None, "set_volume", {"level": 1000}, "params.level"),
])
def test_check_action_refuses_and_names_the_field(profile: str | None, action: str, params: object,
                                                  field: str) -> None:
    with pytest.raises(ActionRejected) as info:
        check_action(action, params, load_profile(profile) if profile else None)
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize("profile, action, params", [
    ("display-lg-serial", "set_volume", {"level": 0}),
    ("display-lg-serial", "set_volume", {"level": 100}),
    ("display-lg-serial", "select_input", {"input": "displayport"}),
    ("projector-pjlink", "power_off", {}),
    (None, "select_input", {"input": "hdmi_7"}),
])
def test_check_action_passes_good_commands(profile: str | None, action: str, params: dict) -> None:
    check_action(action, params, load_profile(profile) if profile else None)


def test_the_agent_uses_the_same_check() -> None:
    from edge_agent.drivers.base import Driver

    class Quiet(Driver):
        protocol = "test"

        async def read(self):  # pragma: no cover - never polled here
            raise NotImplementedError

    driver = Quiet("tv", load_profile("display-lg-serial"), {})
    with pytest.raises(ActionRejected, match="params.ramp is not a parameter of set_volume"):
        driver.validate_action("set_volume", {"level": 5, "ramp": 1})
    assert device_profiles.shipped_profile("../../etc/passwd") is None
