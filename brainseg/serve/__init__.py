"""seg-serve: online segmentation over HTTP, through the same runtime path as seg-run.

- `brainseg.serve.core`: `SegmentationService`, the model and the request pipeline: admission,
  body, decoding, batching, answer (the same in both modes).
- `brainseg.serve.app`: the ASGI app (FastAPI) over it: routes, request ids, the error answers.
- `brainseg.serve.formats`: what is accepted on the wire, judged from a body's first bytes.
- `brainseg.serve.payloads`: request bodies decoded from memory, mask files and numbers out.
- `brainseg.serve.batching`: the embedded mode's in-process dynamic batcher.
- `brainseg.serve.embedded`: the uvicorn server of the embedded mode (the default).
- `brainseg.serve.ray_replica`: the Ray Serve replica of `--ray` (imported inside Ray only).
- `brainseg.serve.options`: `ServeOptions`, the listening, batching and limit settings beside the
  `SegmenterOptions` the model is opened with.
- `brainseg.serve.service`: `running_service` / `serve_forever`, which start either mode and wait
  until the model is loaded.
- `brainseg.serve.cli`: the `seg-serve` command.

FastAPI and uvicorn are imported only when a service starts (`pip install 'brainseg[serve]'`),
Ray only in Ray mode (`pip install 'brainseg[distributed]'`); nothing here imports torch,
`brainseg.export` or `brainseg.train`.
"""
