"""The order test modules are handed to pytest-xdist's workers: the longest first.

`./scripts/test.sh` runs `--dist loadfile --no-loadscope-reorder`: each worker runs whole
modules, taking the next one in collection order when it has finished one. xdist's own order
(most tests first) put the modules with a few long tests (the API fuzzer, the Redfish and Ironic
deploys, the demo, the two-worker IPMI benchmark) last, so one worker ran them alone at the end
while the others had nothing left. Longest first keeps every worker busy until the end.

`MODULE_SECONDS` is one worker's seconds per module (setup, call and teardown of its tests) from a
whole run's JUnit report (`--junitxml`; 2026-12-08, three workers on the 2-core CI machine kind),
modules of 25 s or more. A module not listed counts as shorter than every listed one and keeps its
place among the others. Only the order depends on it: a stale figure costs time, never a test.
"""

from __future__ import annotations

import pytest

MODULE_SECONDS = {
    "test_api_fuzz": 211,
    "test_fleet_redfish": 194,
    "test_console_a11y": 183,
    "test_fleet_ironic": 149,
    "test_focus_export": 143,
    "test_backup_restore": 141,
    "test_demo": 131,
    "test_console_browser": 111,
    "test_cli": 107,
    "test_ipmi_bench": 91,
    "test_metering_cli": 86,
    "test_gpu_instance_leases": 81,
    "test_console_node_table": 79,
    "test_console_browser_costs": 77,
    "test_observability": 68,
    "test_doctor": 66,
    "test_console_browser_vdcs": 65,
    "test_collection_pipeline": 64,
    "test_deploy_image": 62,
    "test_metering_exports": 56,
    "test_ironic_driver": 55,
    "test_sso_provider": 53,
    "test_dual_bmc": 52,
    "test_focus_demo_exact": 52,
    "test_carbon": 52,
    "test_deploy_install": 49,
    "test_kubernetes_collector": 48,
    "test_node_import": 48,
    "test_console_browser_instances": 47,
    "test_worker_and_tenancy_cli": 47,
    "test_console_auth": 45,
    "test_tenancy_api": 44,
    "test_instance_lease_gpu_removed": 44,
    "test_ipmi_sim_peer": 44,
    "test_redfish_pipeline": 40,
    "test_firmware_compliance": 38,
    "test_partitions": 37,
    "test_signin_throttle": 37,
    "test_gpu_usage_parity": 32,
    "test_console_browser_members": 30,
    "test_console_browser_node": 30,
    "test_metering_api": 29,
    "test_upstream_corpus": 27,
    "test_metering_properties": 26,
    "test_sessions": 26,
}


def longest_first(items: list[pytest.Item]) -> None:
    """Reorder `items` (in place) module by module, longest module first; a module's own tests keep
    their order, and so do unlisted modules among themselves."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.stem, 0))
