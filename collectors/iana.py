"""IANA enterprise numbers of the server and BMC makers Kiln meets, named as FreeIPMI names them.

A BMC's Get Device ID answer carries its maker as an IANA private enterprise number. FreeIPMI's
`bmc-info` prints it as "Manufacturer ID : Dell Inc. (674)" when its table has a name for the
number, else as the bare number (chu11/freeipmi-mirror `bmc-info/bmc-info.c`), and Prometheus
ipmi_exporter copies that text into `ipmi_bmc_info{manufacturer_id=...}`. The names below are
FreeIPMI's (`libfreeipmi/spec/ipmi-iana-enterprise-numbers-spec.c` at commit
53e7bd2c900eb2128c73e3316212d605b8ad40ca, a copy of IANA's registry); numbers outside this short
table are written bare, which is where Kiln and a FreeIPMI with the whole registry differ.

    manufacturer_label(674) == "Dell Inc. (674)"; manufacturer_label(99999) == "99999"
"""

from __future__ import annotations

ENTERPRISE_NAMES = {
    0: "Reserved",  # what a BMC without a maker id (development builds, simulators) reports
    2: "IBM",
    11: "Hewlett-Packard",
    343: "Intel Corporation",
    674: "Dell Inc.",
    2011: "HUAWEI Technology Co.,Ltd",
    3704: "Advanced Micro Devices, Inc",
    5703: "NVIDIA Corporation",
    6653: "Tyan Computer Corporation",
    7244: "Quanta Computer Inc.",
    9342: "Penguin Computing",
    10368: "Fujitsu Technology Solutions GmbH",
    10876: "Super Micro Computer Inc.",
    11161: "Wistron Corporation",
    11183: "Mitac International Corp.",
    15370: "GIGA-BYTE TECHNOLOGY CO., LTD",
    19046: "Lenovo Enterprise Business Group",
    20569: "Inventec Enterprise System Corp.",
    20974: "American Megatrends, Inc",
    37945: "Inspur(BeiJing) Electronic Information Industry Co.,Ltd",
    40981: "Facebook, Inc.",
    47196: "Hewlett Packard Enterprise",
    52538: "Ampere Computing",
}


def manufacturer_label(number: int) -> str:
    """The `manufacturer_id` label as ipmi_exporter (through FreeIPMI) writes it."""
    name = ENTERPRISE_NAMES.get(number)
    return f"{name} ({number})" if name else str(number)
