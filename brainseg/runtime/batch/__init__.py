"""seg-run over many scans: the plan every run follows (`plan`), the local threaded pipeline
(`pipeline`, the default) and the same run on Ray Data (`ray_run`), the bounded queue between
stages and the output folder's lock."""
