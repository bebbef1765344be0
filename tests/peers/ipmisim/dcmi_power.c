/*
 * dcmi_power.c - DCMI "Get Power Reading" for OpenIPMI's ipmi_sim (a loadlib module).
 *
 * Stock ipmi_sim 2.0.33 answers every DCMI command with completion code 0xC1 (invalid
 * command). This module registers a handler for group extension 0xDC on netfn 0x2C
 * (ipmi_emu_register_group_extension_handler, OpenIPMI/mcserv.h) and implements one DCMI
 * command, Get Power Reading (cmd 0x02), "system power statistics" mode (mode 0x01), as
 * DCMI 1.5 section 6.6.1 (table 6-16 "Get Power Reading Command") lays it out:
 *
 *   request:  group id 0xDC, mode, mode attributes, reserved
 *   response: completion code, group id 0xDC,
 *             current, minimum, maximum, average power in watts (each LS byte first, 16 bits),
 *             IPMI time stamp of the reading (LS byte first, 32 bits),
 *             statistics reporting period in ms (LS byte first, 32 bits),
 *             power reading state (bit 6 = 0x40: power measurement active)
 *
 * The reading is deterministic: the watts are read from a file at every request, so a test
 * can set them and compare every client's answer with that number. Current, minimum,
 * maximum and average are all that value; the period is 1000 ms. A missing or unreadable
 * file gives an inactive measurement (state 0x00, zero watts), as a BMC whose power
 * monitor is off answers. Other DCMI commands and modes: 0xC1 and 0xCC.
 *
 * Privilege is ipmi_sim's own business and is not checked here: its priv_table.c treats
 * every netfn above transport (0x0C) as administrator-only, so a user or operator session
 * gets completion code 0xD4 before this handler runs.
 *
 * lan.conf:   loadlib "/path/dcmi_power.so" "/path/to/watts-file"
 * build:      gcc -shared -fPIC -O2 -Wall -o dcmi_power.so dcmi_power.c   (libopenipmi-dev)
 */

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <OpenIPMI/ipmi_err.h>
#include <OpenIPMI/ipmi_msgbits.h>
#include <OpenIPMI/serv.h>
#include <OpenIPMI/mcserv.h>

#define DCMI_GROUP_ID               0xDC
#define DCMI_GET_POWER_READING      0x02
#define DCMI_MODE_SYSTEM_POWER      0x01
#define DCMI_MEASUREMENT_ACTIVE     0x40
#define DCMI_PERIOD_MS              1000u
#define RESPONSE_LENGTH             19   /* completion code + 18 data bytes */

static char *watts_path;

static void put16(unsigned char *p, unsigned int v)
{
    p[0] = v & 0xff;
    p[1] = (v >> 8) & 0xff;
}

static void put32(unsigned char *p, uint32_t v)
{
    put16(p, v & 0xffff);
    put16(p + 2, v >> 16);
}

/* The watts in the file (0-65535), or -1 when it cannot be read. */
static long read_watts(void)
{
    FILE *f = fopen(watts_path, "r");
    long watts = -1;

    if (!f)
        return -1;
    if (fscanf(f, "%ld", &watts) != 1 || watts < 0 || watts > 0xffff)
        watts = -1;
    fclose(f);
    return watts;
}

static void handle_dcmi(lmc_data_t *mc, msg_t *msg, unsigned char *rdata, unsigned int *rdata_len,
                        void *cb_data)
{
    long watts;
    unsigned int i;

    (void) cb_data;
    if (msg->cmd != DCMI_GET_POWER_READING) {
        handle_invalid_cmd(mc, rdata, rdata_len);
        return;
    }
    if (check_msg_length(msg, 4, rdata, rdata_len))
        return;
    if (msg->data[1] != DCMI_MODE_SYSTEM_POWER) {
        rdata[0] = IPMI_INVALID_DATA_FIELD_CC;
        *rdata_len = 1;
        return;
    }
    watts = read_watts();
    rdata[0] = 0;
    rdata[1] = DCMI_GROUP_ID;
    for (i = 0; i < 4; i++)  /* current, minimum, maximum, average */
        put16(rdata + 2 + 2 * i, watts < 0 ? 0 : (unsigned int) watts);
    put32(rdata + 10, (uint32_t) time(NULL));
    put32(rdata + 14, DCMI_PERIOD_MS);
    rdata[18] = watts < 0 ? 0 : DCMI_MEASUREMENT_ACTIVE;
    *rdata_len = RESPONSE_LENGTH;
}

int ipmi_sim_module_print_version(sys_data_t *sys, char *options)
{
    (void) sys;
    (void) options;
    printf("Kiln DCMI power reading module 1\n");
    return 0;
}

int ipmi_sim_module_init(sys_data_t *sys, const char *options)
{
    if (!options || !*options) {
        sys->log(sys, SETUP_ERROR, NULL, "dcmi_power: loadlib needs the watts file as its option");
        return EINVAL;
    }
    watts_path = strdup(options);
    if (!watts_path)
        return ENOMEM;
    ipmi_emu_register_group_extension_handler(DCMI_GROUP_ID, handle_dcmi, NULL);
    return 0;
}
