"""Fleet: inventory, provisioning drivers (Ironic, Metal3, fake) and tenancy (VDCs, leases, quotas)."""
