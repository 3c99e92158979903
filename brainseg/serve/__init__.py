"""seg-serve: online segmentation over HTTP on Ray Serve, through the same runtime path as seg-run.

- `brainseg.serve.app`: the deployment (`SegmentationService`): routes, batching, the model.
- `brainseg.serve.payloads`: request bodies in, mask files and numbers out (no Ray).
- `brainseg.serve.options`: `ServeOptions`, the listening and batching settings beside the
  `SegmenterOptions` every replica opens its model with.
- `brainseg.serve.service`: `running_service` / `serve_forever`, which start Ray Serve and wait
  until the model is loaded.
- `brainseg.serve.cli`: the `seg-serve` command.

Ray is imported only when a service starts (`pip install 'brainseg[distributed]'`); nothing here
imports torch, `brainseg.export` or `brainseg.train`.
"""
