"""REAL QEMU runs of the lab's scenario kernels (sample_traces/lab-*, written by
`kmltrace lab run`): each bundle's manifest names the incidents its scenario must produce
(`lab.scenario.incidents`, from the scenario's definition, not from kmltrace) and those it
must not (`lab.scenario.absent`). The report must agree on both."""

import json

import pytest

from kmltrace.capture import load
from kmltrace.report import build_report
from tests.conftest import SAMPLES

# QEMU's -d int log (TCG) shows every delivery; under KVM the guest's exceptions never reach
# the host trace, so the -kvm bundles are the post-mortem's (chains) to judge
LAB = sorted(p for p in SAMPLES.glob("lab-*-tcg") if (p / "bundle.json").is_file())


def scenario(bundle):
    return json.loads((bundle / "bundle.json").read_text())["lab"]["scenario"]


@pytest.mark.parametrize("bundle", LAB, ids=[p.name for p in LAB])
def test_lab_verdicts(bundle):
    expected = scenario(bundle)
    report = build_report(load([str(bundle)]), postmortem=True)
    kinds = {i["kind"] for i in report["incidents"]}
    assert set(expected["incidents"]) <= kinds
    assert not set(expected["absent"]) & kinds
    # no stack switch on a gate means frames pushed on the interrupted CPL 0 stack
    if "redzone_clobber" in expected["absent"]:
        assert all(s["stack"] != "same" or s["cpl"] != 0 for s in report["stacks"]
                   if str(s["vector"]) in expected["gates"] and expected["gates"][str(s["vector"])])
