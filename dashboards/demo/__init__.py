"""`kiln demo`: a simulated GPU fleet with a month of history, served by the real appliance."""
