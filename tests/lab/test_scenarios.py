"""The scenario list agrees with the kernel source it describes."""

import re

from kmltrace.lab import scenarios
from kmltrace.lab.build import SOURCE_DIR

KERNEL = (SOURCE_DIR / "kernel.S").read_text()


def test_lab_h_constants_evaluate_from_the_header():
    c = scenarios.constants()
    # the values written in lab.h, restated: the starving push writes 8 bytes below the page
    assert c["USER_STACK_TOP"] == 0x00007FFFFFFFF000
    assert c["USER_STACK_BOTTOM"] == 0x00007FFFFFFFE000
    assert c["GUARD_PAGE"] == 0x00007FFFFFFFD000
    assert c["STARVE_CR2"] == c["STARVE_RSP"] - 8
    assert c["REDZONE_RSP"] == 0x00007FFFFFFFEC00


def test_every_scenario_has_its_code_and_name_in_the_kernel():
    c = scenarios.constants()
    names = re.findall(r'\.asciz "([a-z0-9-]+)"\n#', KERNEL + "\n#")
    for scenario in scenarios.SCENARIOS.values():
        assert scenario.define in c, scenario.define
        assert f"SCENARIO == {scenario.define}" in KERNEL
        assert f'.asciz "{scenario.name}"' in KERNEL
    assert len(scenarios.SCENARIOS) >= 8
    assert names  # the scenario_name table exists


def test_expected_gates_match_the_idt_setup_in_kernel_s():
    """Each scenario's gate table (vector -> IST) is what idt_init installs for it."""
    c = scenarios.constants()
    blocks = re.split(r"#(?:el)?if SCENARIO == ", KERNEL.split("idt_init:")[1].split("lidt")[0])
    assert len(blocks) - 1 == len(scenarios.SCENARIOS)
    for block in blocks[1:]:
        define = block.split()[0]
        scenario = next(s for s in scenarios.SCENARIOS.values() if s.define == define)
        installed = {}
        for vector, ist in re.findall(r"gate (\w+), \w+, (\w+), GATE", block):
            installed[c.get(vector, None) or int(vector, 0)] = c.get(ist, None) \
                if ist in c else int(ist, 0)
        for vector, ist in scenario.gates.items():
            assert installed.get(vector, 0) == ist, (scenario.name, vector)


def test_to_json_uses_hex_strings_for_addresses():
    out = scenarios.get("starvation").to_json()
    assert out["facts"]["cr2"] == "0x7fffffffdff8"
    assert out["facts"]["cpl"] == 0
    assert out["reset"] is True and out["vectors"] == [14, 8]


def test_unknown_scenario_names_the_choices():
    try:
        scenarios.get("nope")
    except KeyError as e:
        assert "starvation" in str(e)
    else:
        raise AssertionError("no KeyError")
