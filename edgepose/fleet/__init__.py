"""Fleet tools: the simulator (`edgepose fleet-sim`) and the live consumer view (`edgepose watch`)."""
