"""The live view: the latest frame and result from the pipeline, served over HTTP (aiohttp)."""
