"""Pose quality on labelled data: clips built from labelled photos, dataset readers, scoring, and the
`edgepose eval` runner that drives the daemon's own stage over them."""
