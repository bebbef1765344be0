"""Provisioning drivers (Ironic, Metal3, fake) behind one protocol, and Ironic's state machine."""
